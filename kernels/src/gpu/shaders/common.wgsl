// Helpers shared by the pooling shaders (prepended by the host).

// v^p for v ≥ 0, with 0^p = 0 (pow's exp2/log2 form leaves it undefined).
fn spow(v: f32, p: f32) -> f32 {
    if (v <= 0.0) {
        return 0.0;
    }
    return pow(v, p);
}

