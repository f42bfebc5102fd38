// Similarity for a few queries (streaming search, memory bound):
// scores[q, j] = Σ_d queries[q, d] · base[row0 + j, d] (× inv_norms when
// prm.cosine is 1) for the four queries of group wg.y. Eight lanes share a
// row, each reading 16-byte words (f32 × 4, or f16 × 8), so a workgroup of
// 256 reads 32 rows per step with whole cache lines; the lanes' partial sums
// meet in workgroup memory. Queries arrive transposed and padded to groups of
// four: queries[g * dim + d] holds dimension d of queries 4g .. 4g + 3.
// Needs dim % 4 == 0 (f32) or dim % 8 == 0 (f16); the host checks.

override HALF: bool = false;

struct Params {
    nq: u32,
    rows: u32,
    dim: u32,
    row0: u32,
    stride: u32,
    cosine: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> queries: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> base: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> inv_norms: array<f32>;
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;

const LANES: u32 = 8u;
const ROWS_PER_STEP: u32 = 32u;
const STEPS: u32 = 4u;

var<workgroup> partial: array<vec4<f32>, 256>;

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let lane = lid.x % LANES;
    let slot = lid.x / LANES;
    let q0 = wg.y * prm.dim;
    let words = select(prm.dim / 4u, prm.dim / 8u, HALF);
    for (var step = 0u; step < STEPS; step++) {
        let r = (wg.x * STEPS + step) * ROWS_PER_STEP + slot;
        var acc = vec4<f32>(0.0);
        if (r < prm.rows) {
            let w0 = (prm.row0 + r) * words;
            for (var w = lane; w < words; w += LANES) {
                let v = base[w0 + w];
                if (HALF) {
                    let d = q0 + w * 8u;
                    let a = unpack2x16float(v.x);
                    let b = unpack2x16float(v.y);
                    let c = unpack2x16float(v.z);
                    let e = unpack2x16float(v.w);
                    acc = fma(queries[d], vec4<f32>(a.x), acc);
                    acc = fma(queries[d + 1u], vec4<f32>(a.y), acc);
                    acc = fma(queries[d + 2u], vec4<f32>(b.x), acc);
                    acc = fma(queries[d + 3u], vec4<f32>(b.y), acc);
                    acc = fma(queries[d + 4u], vec4<f32>(c.x), acc);
                    acc = fma(queries[d + 5u], vec4<f32>(c.y), acc);
                    acc = fma(queries[d + 6u], vec4<f32>(e.x), acc);
                    acc = fma(queries[d + 7u], vec4<f32>(e.y), acc);
                } else {
                    let d = q0 + w * 4u;
                    acc = fma(queries[d], vec4<f32>(bitcast<f32>(v.x)), acc);
                    acc = fma(queries[d + 1u], vec4<f32>(bitcast<f32>(v.y)), acc);
                    acc = fma(queries[d + 2u], vec4<f32>(bitcast<f32>(v.z)), acc);
                    acc = fma(queries[d + 3u], vec4<f32>(bitcast<f32>(v.w)), acc);
                }
            }
        }
        partial[lid.x] = acc;
        workgroupBarrier();
        if (lane < 4u) {
            partial[lid.x] += partial[lid.x + 4u];
        }
        workgroupBarrier();
        if (lane < 2u) {
            partial[lid.x] += partial[lid.x + 2u];
        }
        workgroupBarrier();
        if (lane == 0u && r < prm.rows) {
            var s = partial[lid.x] + partial[lid.x + 1u];
            if (prm.cosine == 1u) {
                s = s * inv_norms[prm.row0 + r];
            }
            for (var i = 0u; i < 4u; i++) {
                let q = wg.y * 4u + i;
                if (q < prm.nq) {
                    scores[q * prm.stride + r] = s[i];
                }
            }
        }
        workgroupBarrier();
    }
}
