// Scale-GeM over one descriptor matrix per scale.

struct SgemParams {
    scales: u32,
    n: u32,
    dim: u32,
    power: u32,    // 0: max of L2-normalised scales; 1: finite power p
    p: f32,
    gamma: f32,    // minimum over all inputs (power mode)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> sp: SgemParams;
@group(0) @binding(1) var<storage, read> sgem_in: array<f32>;   // scales × n × dim
@group(0) @binding(2) var<storage, read_write> sgem_out: array<f32>;

var<workgroup> red: array<f32, 256>;
var<workgroup> inv_scale: array<f32, 16>;

fn reduce_sum(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (tid < s) {
            red[tid] += red[tid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

fn inv_len(sq: f32) -> f32 {
    if (sq > 0.0) {
        return 1.0 / sqrt(sq);
    }
    return 0.0;
}

// One workgroup per descriptor.
@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wg.y * nw.x + wg.x;
    let tid = lid.x;
    let valid = row < sp.n;
    let r = min(row, sp.n - 1u);
    let plane = sp.n * sp.dim;
    if (sp.power == 0u) {
        for (var s = 0u; s < sp.scales; s++) {
            var part = 0.0;
            for (var j = tid; j < sp.dim; j += 256u) {
                let v = sgem_in[s * plane + r * sp.dim + j];
                part += v * v;
            }
            let total = reduce_sum(tid, part);
            if (tid == 0u) {
                inv_scale[s] = inv_len(total);
            }
            workgroupBarrier();
        }
    }
    var part = 0.0;
    for (var j = tid; j < sp.dim; j += 256u) {
        var m: f32;
        if (sp.power == 0u) {
            m = sgem_in[r * sp.dim + j] * inv_scale[0];
            for (var s = 1u; s < sp.scales; s++) {
                m = max(m, sgem_in[s * plane + r * sp.dim + j] * inv_scale[s]);
            }
        } else {
            var acc = 0.0;
            for (var s = 0u; s < sp.scales; s++) {
                acc += spow(sgem_in[s * plane + r * sp.dim + j] - sp.gamma, sp.p);
            }
            m = spow(acc / f32(sp.scales), 1.0 / sp.p) + sp.gamma;
        }
        if (valid) {
            sgem_out[r * sp.dim + j] = m;
        }
        part += m * m;
    }
    let inv = inv_len(reduce_sum(tid, part));
    if (valid) {
        for (var j = tid; j < sp.dim; j += 256u) {
            sgem_out[r * sp.dim + j] *= inv;
        }
    }
}
