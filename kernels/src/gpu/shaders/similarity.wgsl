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
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
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
            var qa: array<f32, 4>;
            var xb: array<f32, 4>;
            for (var a = 0u; a < 4u; a++) {
                qa[a] = qs[kk * TILE + lid.y + 16u * a];
                xb[a] = xs[kk * TILE + lid.x + 16u * a];
            }
            for (var a = 0u; a < 4u; a++) {
                for (var b = 0u; b < 4u; b++) {
                    acc[a * 4u + b] = fma(qa[a], xb[b], acc[a * 4u + b]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var a = 0u; a < 4u; a++) {
        let q = q_base + lid.y + 16u * a;
        for (var b = 0u; b < 4u; b++) {
            let r = row_base + lid.x + 16u * b;
            if (q < prm.nq && r < prm.rows) {
                var s = acc[a * 4u + b];
                if (prm.cosine == 1u) {
                    s = s * inv_norms[prm.row0 + r];
                }
                scores[q * prm.stride + r] = s;
            }
        }
    }
}
