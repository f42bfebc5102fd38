// GeM pooling: f_c = (mean_{h,w} max(x, eps)^p)^(1/p).

struct GemParams {
    planes: u32,   // n × c
    hw: u32,
    p: f32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> gp: GemParams;
@group(0) @binding(1) var<storage, read> gem_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> gem_out: array<f32>;

// One invocation per channel plane; planes are indexed across a 2-D grid of
// workgroups so that more than 65,535 × 256 planes fit.
@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
       @builtin(local_invocation_id) lid: vec3<u32>) {
    let plane = (wg.y * nw.x + wg.x) * 256u + lid.x;
    if (plane >= gp.planes) {
        return;
    }
    var s = 0.0;
    for (var i = 0u; i < gp.hw; i++) {
        s += pow(max(gem_in[plane * gp.hw + i], gp.eps), gp.p);
    }
    gem_out[plane] = pow(s / f32(gp.hw), 1.0 / gp.p);
}
