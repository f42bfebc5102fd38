// Regional-GeM: mix · LP(x) + (1 − mix) · x over a reflection-padded window.

struct RgemParams {
    total: u32,    // n × c × h × w
    h: u32,
    w: u32,
    size: u32,
    p: f32,
    mix: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> rp: RgemParams;
@group(0) @binding(1) var<storage, read> rgem_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> rgem_out: array<f32>;

// Index reflected into 0..len without repeating the edge (ReflectionPad2d),
// as often as needed.
fn reflect(i: i32, len: i32) -> u32 {
    if (len == 1) {
        return 0u;
    }
    let period = 2 * (len - 1);
    var m = i % period;
    if (m < 0) {
        m += period;
    }
    if (m >= len) {
        m = period - m;
    }
    return u32(m);
}

// One invocation per output value.
@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = (wg.y * nw.x + wg.x) * 256u + lid.x;
    if (idx >= rp.total) {
        return;
    }
    let hw = rp.h * rp.w;
    let plane = idx / hw;
    let y = i32((idx % hw) / rp.w);
    let x = i32(idx % rp.w);
    let pad = i32(rp.size / 2u);
    var s = 0.0;
    for (var dy = -pad; dy <= pad; dy++) {
        let ry = reflect(y + dy, i32(rp.h));
        for (var dx = -pad; dx <= pad; dx++) {
            let rx = reflect(x + dx, i32(rp.w));
            s += spow(rgem_in[plane * hw + ry * rp.w + rx], rp.p);
        }
    }
    let lp = spow(s / f32(rp.size * rp.size), 1.0 / rp.p);
    rgem_out[idx] = rp.mix * lp + (1.0 - rp.mix) * rgem_in[idx];
}
