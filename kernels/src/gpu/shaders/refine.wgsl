// SuperGlobal's database-side refinement, one workgroup per candidate i:
// pick the K most similar other candidates from row i of the Gram matrix
// (ties by index: each round takes the best item strictly after the previous
// pick in (score desc, index asc) order), then
// x̃_i = (x_i + Σ_j β s_ij x_j) / (1 + Σ_j β s_ij).

struct Params {
    m: u32,
    dim: u32,
    k: u32,
    beta: f32,
}

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gram: array<f32>;
@group(0) @binding(3) var<storage, read_write> refined: array<f32>;

var<workgroup> best_s: array<f32, 256>;
var<workgroup> best_j: array<u32, 256>;
var<workgroup> picks: array<u32, 64>;
var<workgroup> weights: array<f32, 64>;
var<workgroup> npicks: u32;

// True when (s, j) comes before (t, l) in (score desc, index asc) order.
fn before(s: f32, j: u32, t: f32, l: u32) -> bool {
    return s > t || (s == t && j < l);
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = min(wg.y * nw.x + wg.x, prm.m - 1u);
    let valid = wg.y * nw.x + wg.x < prm.m;
    let tid = lid.x;
    let none = 0xffffffffu;
    if (tid == 0u) {
        npicks = 0u;
    }
    workgroupBarrier();
    var prev_s = 0.0;
    var prev_j = none;
    let rounds = min(prm.k, prm.m - 1u);
    for (var pick = 0u; pick < rounds; pick++) {
        var bs = 0.0;
        var bj = none;
        for (var j = tid; j < prm.m; j += 256u) {
            let s = gram[i * prm.m + j];
            let eligible = j != i && (prev_j == none || before(prev_s, prev_j, s, j));
            if (eligible && (bj == none || before(s, j, bs, bj))) {
                bs = s;
                bj = j;
            }
        }
        best_s[tid] = bs;
        best_j[tid] = bj;
        workgroupBarrier();
        for (var w = 128u; w > 0u; w >>= 1u) {
            if (tid < w) {
                let os = best_s[tid + w];
                let oj = best_j[tid + w];
                if (oj != none && (best_j[tid] == none || before(os, oj, best_s[tid], best_j[tid]))) {
                    best_s[tid] = os;
                    best_j[tid] = oj;
                }
            }
            workgroupBarrier();
        }
        prev_s = best_s[0];
        prev_j = best_j[0];
        if (tid == 0u) {
            picks[pick] = prev_j;
            weights[pick] = prm.beta * prev_s;
            npicks = pick + 1u;
        }
        workgroupBarrier();
    }
    var total = 1.0;
    for (var r = 0u; r < rounds; r++) {
        total += weights[r];
    }
    let inv = 1.0 / total;
    if (valid) {
        for (var d = tid; d < prm.dim; d += 256u) {
            var acc = x[i * prm.dim + d];
            for (var r = 0u; r < rounds; r++) {
                acc += weights[r] * x[picks[r] * prm.dim + d];
            }
            refined[i * prm.dim + d] = acc * inv;
        }
    }
}
