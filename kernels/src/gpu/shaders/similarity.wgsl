// Tiled Q×B similarity: scores[q, j] = Σ_d queries[q, d] · base[row0 + j, d]
// (× inv_norms[row0 + j] when prm.cosine is 1). A 16×16 workgroup computes a 64×64
// tile (4×4 per invocation), staging 16-wide slices of both operands in
// workgroup memory. The base is read as u32 words: f32 bits, or two f16
// values per word (unpack2x16float) when HALF is set.

override HALF: bool = false;

struct Params {
    nq: u32,      // queries in this dispatch
    rows: u32,    // base rows in this dispatch
    dim: u32,
    row0: u32,    // first row inside the bound base buffer
    stride: u32,  // scores row stride (per query)
    cosine: u32,  // 1: multiply by the row's inverse norm
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> queries: array<f32>;
@group(0) @binding(2) var<storage, read> base: array<u32>;
@group(0) @binding(3) var<storage, read> inv_norms: array<f32>;
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;

const TILE: u32 = 64u;
const KT: u32 = 16u;

var<workgroup> qs: array<f32, 1024>; // [KT][TILE]
var<workgroup> xs: array<f32, 1024>; // [KT][TILE]

fn load_base(r: u32, d: u32) -> f32 {
    let flat = r * prm.dim + d;
    if (HALF) {
        let v = unpack2x16float(base[flat >> 1u]);
        return select(v.x, v.y, (flat & 1u) == 1u);
    }
    return bitcast<f32>(base[flat]);
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row_base = wg.x * TILE;
    let q_base = wg.y * TILE;
    let tid = lid.y * 16u + lid.x;
    // The 4×4 accumulators as four vec4 rows (query a, rows b = 0..3):
    // named values, never a dynamically indexed array, so they stay in
    // registers on every compiler.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < prm.dim; k0 += KT) {
        for (var t = 0u; t < 4u; t++) {
            let idx = tid + 256u * t;
            let i = idx / KT;
            let kk = idx % KT;
            let d = k0 + kk;
            var qv = 0.0;
            let q = q_base + i;
            if (q < prm.nq && d < prm.dim) {
                qv = queries[q * prm.dim + d];
            }
            qs[kk * TILE + i] = qv;
            var xv = 0.0;
            let r = row_base + i;
            if (r < prm.rows && d < prm.dim) {
                xv = load_base(prm.row0 + r, d);
            }
            xs[kk * TILE + i] = xv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KT; kk++) {
            let o = kk * TILE;
            let xb = vec4<f32>(xs[o + lid.x], xs[o + lid.x + 16u], xs[o + lid.x + 32u], xs[o + lid.x + 48u]);
            acc0 = fma(vec4<f32>(qs[o + lid.y]), xb, acc0);
            acc1 = fma(vec4<f32>(qs[o + lid.y + 16u]), xb, acc1);
            acc2 = fma(vec4<f32>(qs[o + lid.y + 32u]), xb, acc2);
            acc3 = fma(vec4<f32>(qs[o + lid.y + 48u]), xb, acc3);
        }
        workgroupBarrier();
    }
    store(q_base + lid.y, row_base + lid.x, acc0);
    store(q_base + lid.y + 16u, row_base + lid.x, acc1);
    store(q_base + lid.y + 32u, row_base + lid.x, acc2);
    store(q_base + lid.y + 48u, row_base + lid.x, acc3);
}

/// Writes one query's four scores (rows r, r + 16, r + 32, r + 48).
fn store(q: u32, r: u32, v: vec4<f32>) {
    if (q >= prm.nq) {
        return;
    }
    for (var b = 0u; b < 4u; b++) {
        let row = r + 16u * b;
        if (row < prm.rows) {
            var s = v[b];
            if (prm.cosine == 1u) {
                s = s * inv_norms[prm.row0 + row];
            }
            scores[q * prm.stride + row] = s;
        }
    }
}
