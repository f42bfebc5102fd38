// Running top-k per query, one workgroup per query. The candidates are the
// query's current list (ids ascending) followed by this block's scores (ids
// gbase, gbase + 1, ...), so the sequence is in ascending id order. A 4-pass
// radix select over order-preserving u32 keys finds the k-th largest key T;
// everything above T is kept, plus the first (lowest-id) items equal to T,
// written in sequence order, so the new list is again ascending by id and
// ties are broken by id exactly as on the CPU.

struct Params {
    k: u32,        // list capacity per query
    rows: u32,     // block scores per query
    stride: u32,   // scores row stride
    gbase: u32,    // global row id of the block's first score
}

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read> keys_in: array<u32>;
@group(0) @binding(3) var<storage, read> ids_in: array<u32>;
@group(0) @binding(4) var<storage, read> count_in: array<u32>;
@group(0) @binding(5) var<storage, read_write> keys_out: array<u32>;
@group(0) @binding(6) var<storage, read_write> ids_out: array<u32>;
@group(0) @binding(7) var<storage, read_write> count_out: array<u32>;

const WG: u32 = 256u;

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> prefix: u32;
var<workgroup> mask: u32;
var<workgroup> remaining: u32;
var<workgroup> greater_cnt: array<u32, 256>;
var<workgroup> equal_cnt: array<u32, 256>;
var<workgroup> kept_start: array<u32, 256>;
var<workgroup> take_cnt: array<u32, 256>;
var<workgroup> floor_key: atomic<u32>;

fn to_key(f: f32) -> u32 {
    let b = bitcast<u32>(f);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// Key of candidate i of query q: the current list first, then the block.
fn key_at(q: u32, i: u32, c_in: u32) -> u32 {
    if (i < c_in) {
        return keys_in[q * prm.k + i];
    }
    return to_key(scores[q * prm.stride + (i - c_in)]);
}

@compute @workgroup_size(256, 1, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let q = wg.x;
    let tid = lid.x;
    let c_in = count_in[q];
    let n = c_in + prm.rows;
    let keff = min(prm.k, n);
    let chunk = (n + WG - 1u) / WG;
    let lo = min(tid * chunk, n);
    let hi = min(lo + chunk, n);
    if (tid == 0u) {
        prefix = 0u;
        mask = 0u;
        remaining = keff;
        atomicStore(&floor_key, 0xffffffffu);
    }
    workgroupBarrier();
    // A full list's smallest key is a floor: a block score at or below it can
    // never enter (the list already holds k keys at least as large, with
    // lower ids), so such scores are skipped in every pass below.
    let full = c_in == prm.k;
    if (full) {
        for (var i = tid; i < c_in; i += WG) {
            atomicMin(&floor_key, keys_in[q * prm.k + i]);
        }
    }
    workgroupBarrier();
    var flo = 0u;
    if (full) {
        flo = atomicLoad(&floor_key);
    }
    for (var digit = 0u; digit < 4u; digit++) {
        let shift = 24u - 8u * digit;
        atomicStore(&hist[tid], 0u);
        workgroupBarrier();
        let pfx = prefix;
        let msk = mask;
        // Strided, so a warp reads whole cache lines; the order of counting
        // does not matter here.
        for (var i = tid; i < n; i += WG) {
            let key = key_at(q, i, c_in);
            if ((key & msk) == pfx && (i < c_in || !full || key > flo)) {
                atomicAdd(&hist[(key >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        if (tid == 0u) {
            var cum = 0u;
            var b = 255u;
            loop {
                let c = atomicLoad(&hist[b]);
                if (cum + c >= remaining || b == 0u) {
                    break;
                }
                cum += c;
                b -= 1u;
            }
            remaining -= cum;
            prefix = prefix | (b << shift);
            mask = mask | (255u << shift);
        }
        workgroupBarrier();
    }
    let t = prefix;
    var g = 0u;
    var e = 0u;
    for (var i = lo; i < hi; i++) {
        let key = key_at(q, i, c_in);
        if (i >= c_in && full && key <= flo) {
            continue;
        }
        if (key > t) {
            g += 1u;
        } else if (key == t) {
            e += 1u;
        }
    }
    greater_cnt[tid] = g;
    equal_cnt[tid] = e;
    workgroupBarrier();
    if (tid == 0u) {
        var ties_before = 0u;
        var kept_before = 0u;
        let want = remaining;
        for (var j = 0u; j < WG; j++) {
            var take = 0u;
            if (ties_before < want) {
                take = min(want - ties_before, equal_cnt[j]);
            }
            ties_before += equal_cnt[j];
            take_cnt[j] = take;
            kept_start[j] = kept_before;
            kept_before += greater_cnt[j] + take;
        }
        count_out[q] = kept_before;
    }
    workgroupBarrier();
    var pos = kept_start[tid];
    var take = take_cnt[tid];
    for (var i = lo; i < hi; i++) {
        let key = key_at(q, i, c_in);
        if (i >= c_in && full && key <= flo) {
            continue;
        }
        var id = prm.gbase + (i - c_in);
        if (i < c_in) {
            id = ids_in[q * prm.k + i];
        }
        var keep = key > t;
        if (!keep && key == t && take > 0u) {
            keep = true;
            take -= 1u;
        }
        if (keep) {
            keys_out[q * prm.k + pos] = key;
            ids_out[q * prm.k + pos] = id;
            pos += 1u;
        }
    }
}
