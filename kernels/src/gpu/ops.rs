//! The kernels' host side: buffer layout, dispatch shapes and readback.

use bytemuck::{Pod, Zeroable};
use half::f16;
use wgpu::util::DeviceExt;

use super::{grid, GpuContext};
use crate::error::{KernelError, Result};
use crate::types::{
    better, FeatureMaps, GemParams, Precision, RegionalGemParams, ScaleGemMode, Scored,
};

/// At most this many queries go through the few-query similarity kernel.
const NARROW_MAX_QUERIES: usize = 16;
/// Rows per workgroup of the few-query kernel (32 rows × 4 steps).
const NARROW_ROWS: usize = 128;

/// Whether `m` queries of length `dim` take the few-query kernel, which
/// reads 16-byte words (4 f32 or 8 f16 values).
fn use_narrow(m: usize, dim: usize, half: bool) -> bool {
    m <= NARROW_MAX_QUERIES && dim % if half { 8 } else { 4 } == 0
}

/// The few-query kernel's layout: groups of four queries, transposed and
/// zero-padded, `out[(g * dim + d) * 4 + i]` = `queries[4g + i][d]`.
fn narrow_queries(queries: &[f32], dim: usize) -> Vec<f32> {
    let m = queries.len() / dim;
    let groups = m.div_ceil(4);
    let mut out = vec![0f32; groups * dim * 4];
    for (q, row) in queries.chunks_exact(dim).enumerate() {
        let (g, i) = (q / 4, q % 4);
        for (d, &v) in row.iter().enumerate() {
            out[(g * dim + d) * 4 + i] = v;
        }
    }
    out
}

/// Rows scored per similarity dispatch (a block); the select pass then
/// merges the block into each query's running list.
const BLOCK_ROWS: usize = 32_768;
/// Bytes of block scores kept on the device at once (queries × block rows × 4).
const SCORES_BYTES: usize = 64 << 20;
/// The select shader keeps per-query lists in plain storage; bound the list.
pub const MAX_K: usize = 16_384;

/// A database resident on the device: one buffer per chunk of whole rows.
#[derive(Debug)]
pub struct GpuDatabase {
    chunks: Vec<Chunk>,
}

#[derive(Debug)]
struct Chunk {
    /// First global row.
    row0: usize,
    rows: usize,
    /// f32 bits, or two f16 per u32 word.
    base: wgpu::Buffer,
    inv_norms: wgpu::Buffer,
}

/// Grow-only buffers reused by every top-k call.
#[derive(Default)]
pub struct Scratch {
    queries: Option<wgpu::Buffer>,
    scores: Option<wgpu::Buffer>,
    lists: Option<[wgpu::Buffer; 6]>,
    lists_bytes: u64,
}

fn grow(
    slot: &mut Option<wgpu::Buffer>,
    ctx: &GpuContext,
    label: &str,
    bytes: u64,
) -> wgpu::Buffer {
    match slot {
        Some(b) if b.size() >= bytes => b.clone(),
        _ => {
            let b = ctx.empty(label, bytes);
            *slot = Some(b.clone());
            b
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SimParams {
    nq: u32,
    rows: u32,
    dim: u32,
    row0: u32,
    stride: u32,
    cosine: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SelectParams {
    k: u32,
    rows: u32,
    stride: u32,
    gbase: u32,
}

impl SimParams {
    fn new(nq: usize, rows: usize, dim: usize, row0: usize, stride: usize, cosine: bool) -> Self {
        SimParams {
            nq: nq as u32,
            rows: rows as u32,
            dim: dim as u32,
            row0: row0 as u32,
            stride: stride as u32,
            cosine: u32::from(cosine),
            _pad: [0; 2],
        }
    }
}

fn as_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        KernelError::Shape(format!(
            "{what} = {v} is too large for the GPU backend (max {})",
            u32::MAX
        ))
    })
}

/// The f32 whose order-preserving key `select.wgsl` produced.
fn from_key(key: u32) -> f32 {
    f32::from_bits(if key & 0x8000_0000 != 0 {
        key & 0x7fff_ffff
    } else {
        !key
    })
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn u32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl GpuContext {
    /// Uploads `rows` (`n × dim`, already rounded to f16 when `precision` is
    /// F16) with their inverse norms.
    pub(crate) fn upload(
        &self,
        rows: &[f32],
        inv_norms: &[f32],
        dim: usize,
        precision: Precision,
    ) -> Result<GpuDatabase> {
        let n = rows.len() / dim;
        as_u32(n * dim, "database values")?;
        let row_bytes = (dim * precision.bytes()) as u64;
        let chunk_rows = ((self.max_chunk_bytes - 4) / row_bytes).max(1) as usize;
        if row_bytes + 4 > self.max_binding {
            return Err(KernelError::Shape(format!(
                "one {dim}-dim row does not fit the adapter's buffer limit"
            )));
        }
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < n {
            let take = chunk_rows.min(n - row0);
            let values = &rows[row0 * dim..(row0 + take) * dim];
            let bytes: Vec<u8> = match precision {
                Precision::F32 => bytemuck::cast_slice(values).to_vec(),
                Precision::F16 => {
                    let mut h: Vec<u16> =
                        values.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
                    if h.len() % 2 == 1 {
                        h.push(0);
                    }
                    bytemuck::cast_slice(&h).to_vec()
                }
            };
            chunks.push(Chunk {
                row0,
                rows: take,
                base: self.storage("database", &bytes),
                inv_norms: self.storage(
                    "inverse norms",
                    bytemuck::cast_slice(&inv_norms[row0..row0 + take]),
                ),
            });
            row0 += take;
        }
        Ok(GpuDatabase { chunks })
    }

    /// Blocks of (chunk, first row inside the chunk, rows).
    fn blocks<'a>(&self, db: &'a GpuDatabase) -> impl Iterator<Item = (&'a Chunk, usize, usize)> {
        db.chunks.iter().flat_map(|c| {
            (0..c.rows.div_ceil(BLOCK_ROWS))
                .map(move |b| (c, b * BLOCK_ROWS, BLOCK_ROWS.min(c.rows - b * BLOCK_ROWS)))
        })
    }

    /// Records one similarity dispatch: the 64×64-tile kernel, or with
    /// `narrow` the few-query kernel (queries laid out by [`narrow_queries`]).
    /// `at`: the parameters already written in a buffer (buffer, offset);
    /// without it a uniform buffer is made for them.
    #[allow(clippy::too_many_arguments)]
    fn record_similarity(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        half: bool,
        narrow: bool,
        params: SimParams,
        at: Option<(&wgpu::Buffer, u64)>,
        queries: &wgpu::Buffer,
        chunk: &Chunk,
        scores: &wgpu::Buffer,
    ) {
        let pipeline = if narrow {
            &self.pipelines.similarity_narrow[usize::from(half)]
        } else {
            &self.pipelines.similarity[usize::from(half)]
        };
        let own;
        let (pbuf, off) = match at {
            Some(a) => a,
            None => {
                own = self.uniform(&params);
                (&own, 0)
            }
        };
        let size = std::mem::size_of::<SimParams>() as u64;
        let group = self.bind_params(
            pipeline,
            (pbuf, off, size),
            &[queries, &chunk.base, &chunk.inv_norms, scores],
        );
        let shape = if narrow {
            (
                (params.rows as usize).div_ceil(NARROW_ROWS),
                (params.nq as usize).div_ceil(4),
            )
        } else {
            (
                (params.rows as usize).div_ceil(64),
                (params.nq as usize).div_ceil(64),
            )
        };
        Self::dispatch(encoder, pipeline, &group, (shape.0 as u32, shape.1 as u32));
    }

    /// Top-`k` rows per query (queries already normalised for cosine).
    pub(crate) fn top_k(
        &self,
        db: &GpuDatabase,
        precision: Precision,
        cosine: bool,
        queries: &[f32],
        dim: usize,
        k: usize,
    ) -> Result<Vec<Vec<Scored>>> {
        let nq = queries.len() / dim;
        let total: usize = db.chunks.iter().map(|c| c.rows).sum();
        let k = k.min(total);
        if k == 0 || nq == 0 {
            return Ok(vec![Vec::new(); nq]);
        }
        if k > MAX_K {
            return Err(KernelError::Parameter(format!(
                "the GPU top-k keeps at most {MAX_K} results per query, asked for {k}"
            )));
        }
        let half = precision == Precision::F16;
        let block = BLOCK_ROWS.min(db.chunks.iter().map(|c| c.rows).max().unwrap_or(1));
        let per_chunk = (SCORES_BYTES / (block * 4)).clamp(1, 65_535);
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(nq);
        for qs in queries.chunks(per_chunk * dim) {
            let m = qs.len() / dim;
            let qbuf = grow(
                &mut scratch.queries,
                self,
                "queries",
                (per_chunk.max(NARROW_MAX_QUERIES) * dim * 4) as u64,
            );
            let sbuf = grow(
                &mut scratch.scores,
                self,
                "scores",
                (per_chunk * block * 4) as u64,
            );
            let list_bytes = (per_chunk * k * 4) as u64;
            if scratch.lists.is_none() || scratch.lists_bytes < list_bytes {
                let mk = |l| self.empty(l, list_bytes);
                scratch.lists = Some([
                    mk("keys a"),
                    mk("ids a"),
                    mk("count a"),
                    mk("keys b"),
                    mk("ids b"),
                    mk("count b"),
                ]);
                scratch.lists_bytes = list_bytes;
            }
            let lists = scratch
                .lists
                .clone()
                .ok_or_else(|| KernelError::Device("list buffers missing".into()))?;
            let narrow = use_narrow(m, dim, half);
            if narrow {
                self.queue
                    .write_buffer(&qbuf, 0, bytemuck::cast_slice(&narrow_queries(qs, dim)));
            } else {
                self.queue.write_buffer(&qbuf, 0, bytemuck::cast_slice(qs));
            }
            self.queue.write_buffer(&lists[2], 0, &vec![0u8; m * 4]);
            let t_record = std::time::Instant::now();
            // Every pass's parameters in one uniform buffer (two aligned
            // slots per block): one buffer per call, not one per pass.
            let align = self.uniform_align();
            let blocks: Vec<(&Chunk, usize, usize)> = self.blocks(db).collect();
            let mut pbytes = vec![0u8; blocks.len() * 2 * align as usize];
            for (b, &(chunk, start, rows)) in blocks.iter().enumerate() {
                let sim = SimParams::new(m, rows, dim, start, block, cosine);
                let sel = SelectParams {
                    k: k as u32,
                    rows: rows as u32,
                    stride: block as u32,
                    gbase: as_u32(chunk.row0 + start, "row id")?,
                };
                let o = b * 2 * align as usize;
                pbytes[o..o + std::mem::size_of::<SimParams>()]
                    .copy_from_slice(bytemuck::bytes_of(&sim));
                let o = o + align as usize;
                pbytes[o..o + std::mem::size_of::<SelectParams>()]
                    .copy_from_slice(bytemuck::bytes_of(&sel));
            }
            let pbuf = self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("top-k parameters"),
                    contents: &pbytes,
                    usage: wgpu::BufferUsages::UNIFORM,
                });
            let mut encoder = self.encoder();
            let mut flip = false;
            for (b, &(chunk, start, rows)) in blocks.iter().enumerate() {
                let params = SimParams::new(m, rows, dim, start, block, cosine);
                let o = b as u64 * 2 * align;
                self.record_similarity(
                    &mut encoder,
                    half,
                    narrow,
                    params,
                    Some((&pbuf, o)),
                    &qbuf,
                    chunk,
                    &sbuf,
                );
                let (src, dst) = if flip {
                    (&lists[3..6], &lists[0..3])
                } else {
                    (&lists[0..3], &lists[3..6])
                };
                let group = self.bind_params(
                    &self.pipelines.select,
                    (&pbuf, o + align, std::mem::size_of::<SelectParams>() as u64),
                    &[&sbuf, &src[0], &src[1], &src[2], &dst[0], &dst[1], &dst[2]],
                );
                Self::dispatch(&mut encoder, &self.pipelines.select, &group, (m as u32, 1));
                flip = !flip;
            }
            let last = if flip { &lists[3..6] } else { &lists[0..3] };
            let recorded = t_record.elapsed();
            let t_run = std::time::Instant::now();
            let data = self.submit_and_read(
                encoder,
                &[
                    (&last[0], (m * k * 4) as u64),
                    (&last[1], (m * k * 4) as u64),
                    (&last[2], (m * 4) as u64),
                ],
            )?;
            tracing::debug!(
                "top-k of {m} queries over {} blocks: recorded in {:.2} ms, submitted and read back in {:.2} ms",
                blocks.len(),
                recorded.as_secs_f64() * 1e3,
                t_run.elapsed().as_secs_f64() * 1e3
            );
            let (keys, ids, counts) = (u32s(&data[0]), u32s(&data[1]), u32s(&data[2]));
            for q in 0..m {
                let c = (counts[q] as usize).min(k);
                let mut hits: Vec<Scored> = (0..c)
                    .map(|i| Scored {
                        row: ids[q * k + i] as usize,
                        score: from_key(keys[q * k + i]),
                    })
                    .collect();
                hits.sort_by(better);
                out.push(hits);
            }
        }
        Ok(out)
    }

    /// Every score, `q × n` (queries already normalised for cosine).
    pub(crate) fn scores(
        &self,
        db: &GpuDatabase,
        precision: Precision,
        cosine: bool,
        queries: &[f32],
        dim: usize,
    ) -> Result<Vec<f32>> {
        let nq = queries.len() / dim;
        let n: usize = db.chunks.iter().map(|c| c.rows).sum();
        let mut all = vec![0f32; nq * n];
        if nq == 0 || n == 0 {
            return Ok(all);
        }
        let half = precision == Precision::F16;
        for (chunk, start, rows) in self.blocks(db) {
            let mut q0 = 0;
            while q0 < nq {
                let m = (nq - q0).min(SCORES_BYTES / (rows * 4)).max(1);
                let sbuf = self.empty("scores", (m * rows * 4) as u64);
                let part = &queries[q0 * dim..(q0 + m) * dim];
                let narrow = use_narrow(m, dim, half);
                let laid_out = if narrow {
                    narrow_queries(part, dim)
                } else {
                    part.to_vec()
                };
                let qpart = self.storage("queries", bytemuck::cast_slice(&laid_out));
                let params = SimParams::new(m, rows, dim, start, rows, cosine);
                let mut encoder = self.encoder();
                self.record_similarity(
                    &mut encoder,
                    half,
                    narrow,
                    params,
                    None,
                    &qpart,
                    chunk,
                    &sbuf,
                );
                let data =
                    f32s(&self.submit_and_read(encoder, &[(&sbuf, (m * rows * 4) as u64)])?[0]);
                let col = chunk.row0 + start;
                for q in 0..m {
                    all[(q0 + q) * n + col..(q0 + q) * n + col + rows]
                        .copy_from_slice(&data[q * rows..(q + 1) * rows]);
                }
                q0 += m;
            }
        }
        Ok(all)
    }

    /// `X Xᵀ` for `X` = `m × dim`.
    pub(crate) fn gram(&self, x: &[f32], dim: usize) -> Result<Vec<f32>> {
        let m = x.len() / dim;
        if m == 0 {
            return Ok(Vec::new());
        }
        let (xbuf, sbuf, encoder) = self.record_gram(x, dim)?;
        let data = self.submit_and_read(encoder, &[(&sbuf, (m * m * 4) as u64)])?;
        drop(xbuf);
        Ok(f32s(&data[0]))
    }

    fn record_gram(
        &self,
        x: &[f32],
        dim: usize,
    ) -> Result<(wgpu::Buffer, wgpu::Buffer, wgpu::CommandEncoder)> {
        let m = x.len() / dim;
        if (m * m * 4) as u64 > self.max_binding || (x.len() * 4) as u64 > self.max_binding {
            return Err(KernelError::Shape(format!(
                "a {m}×{m} Gram matrix does not fit one GPU buffer"
            )));
        }
        let xbuf = self.storage("gram input", bytemuck::cast_slice(x));
        let sbuf = self.empty("gram", (m * m * 4) as u64);
        let ones = self.storage("unused norms", &[0u8; 4]);
        let chunk = Chunk {
            row0: 0,
            rows: m,
            base: xbuf.clone(),
            inv_norms: ones,
        };
        let params = SimParams::new(m, m, dim, 0, m, false);
        let mut encoder = self.encoder();
        self.record_similarity(
            &mut encoder,
            false,
            false,
            params,
            None,
            &xbuf,
            &chunk,
            &sbuf,
        );
        Ok((xbuf, sbuf, encoder))
    }

    /// Gram matrix and neighbour refinement in one submission.
    pub(crate) fn refine(&self, x: &[f32], dim: usize, k: usize, beta: f32) -> Result<Vec<f32>> {
        let m = x.len() / dim;
        if m == 0 {
            return Ok(Vec::new());
        }
        let (xbuf, sbuf, mut encoder) = self.record_gram(x, dim)?;
        #[repr(C)]
        #[derive(Clone, Copy, Pod, Zeroable)]
        struct P {
            m: u32,
            dim: u32,
            k: u32,
            beta: f32,
        }
        let p = self.uniform(&P {
            m: m as u32,
            dim: dim as u32,
            k: k as u32,
            beta,
        });
        let out = self.empty("refined", (m * dim * 4) as u64);
        let group = self.bind(&self.pipelines.refine, &[&p, &xbuf, &sbuf, &out]);
        Self::dispatch(&mut encoder, &self.pipelines.refine, &group, grid(m));
        Ok(f32s(
            &self.submit_and_read(encoder, &[(&out, (m * dim * 4) as u64)])?[0],
        ))
    }

    pub(crate) fn gem(&self, maps: FeatureMaps<'_>, params: GemParams) -> Result<Vec<f32>> {
        #[repr(C)]
        #[derive(Clone, Copy, Pod, Zeroable)]
        struct P {
            planes: u32,
            hw: u32,
            p: f32,
            eps: f32,
        }
        let planes = maps.n * maps.c;
        self.fits(maps.data.len(), "feature maps")?;
        let p = self.uniform(&P {
            planes: as_u32(planes, "planes")?,
            hw: (maps.h * maps.w) as u32,
            p: params.p,
            eps: params.eps,
        });
        let input = self.storage("maps", bytemuck::cast_slice(maps.data));
        let out = self.empty("pooled", (planes * 4) as u64);
        let group = self.bind(&self.pipelines.gem, &[&p, &input, &out]);
        let mut encoder = self.encoder();
        Self::dispatch(
            &mut encoder,
            &self.pipelines.gem,
            &group,
            grid(planes.div_ceil(256)),
        );
        Ok(f32s(
            &self.submit_and_read(encoder, &[(&out, (planes * 4) as u64)])?[0],
        ))
    }

    pub(crate) fn regional_gem(
        &self,
        maps: FeatureMaps<'_>,
        params: RegionalGemParams,
    ) -> Result<Vec<f32>> {
        #[repr(C)]
        #[derive(Clone, Copy, Pod, Zeroable)]
        struct P {
            total: u32,
            h: u32,
            w: u32,
            size: u32,
            p: f32,
            mix: f32,
            _pad: [u32; 2],
        }
        let total = maps.data.len();
        self.fits(total, "feature maps")?;
        let p = self.uniform(&P {
            total: as_u32(total, "feature values")?,
            h: maps.h as u32,
            w: maps.w as u32,
            size: as_u32(params.size, "window")?,
            p: params.p,
            mix: params.mix,
            _pad: [0; 2],
        });
        let input = self.storage("maps", bytemuck::cast_slice(maps.data));
        let out = self.empty("regional", (total * 4) as u64);
        let group = self.bind(&self.pipelines.rgem, &[&p, &input, &out]);
        let mut encoder = self.encoder();
        Self::dispatch(
            &mut encoder,
            &self.pipelines.rgem,
            &group,
            grid(total.div_ceil(256)),
        );
        Ok(f32s(
            &self.submit_and_read(encoder, &[(&out, (total * 4) as u64)])?[0],
        ))
    }

    pub(crate) fn scale_gem(
        &self,
        scales: &[&[f32]],
        n: usize,
        dim: usize,
        mode: ScaleGemMode,
    ) -> Result<Vec<f32>> {
        #[repr(C)]
        #[derive(Clone, Copy, Pod, Zeroable)]
        struct P {
            scales: u32,
            n: u32,
            dim: u32,
            power: u32,
            p: f32,
            gamma: f32,
            _pad: [u32; 2],
        }
        if scales.len() > 16 {
            return Err(KernelError::Parameter(format!(
                "the GPU Scale-GeM takes at most 16 scales, got {}",
                scales.len()
            )));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let stacked: Vec<f32> = scales.iter().flat_map(|s| s.iter().copied()).collect();
        self.fits(stacked.len(), "Scale-GeM input")?;
        let (power, p, gamma) = match mode {
            ScaleGemMode::Max => (0, 1.0, 0.0),
            // γ, the minimum over every input, is a reduction the host does
            // while it has the values anyway.
            ScaleGemMode::Power(p) => (1, p, stacked.iter().copied().fold(f32::INFINITY, f32::min)),
        };
        let params = self.uniform(&P {
            scales: scales.len() as u32,
            n: n as u32,
            dim: dim as u32,
            power,
            p,
            gamma,
            _pad: [0; 2],
        });
        let input = self.storage("scales", bytemuck::cast_slice(&stacked));
        let out = self.empty("merged", (n * dim * 4) as u64);
        let group = self.bind(&self.pipelines.sgem, &[&params, &input, &out]);
        let mut encoder = self.encoder();
        Self::dispatch(&mut encoder, &self.pipelines.sgem, &group, grid(n));
        Ok(f32s(
            &self.submit_and_read(encoder, &[(&out, (n * dim * 4) as u64)])?[0],
        ))
    }

    /// Where a top-k call's time goes on this device, in seconds (best of
    /// `runs` each): an empty submit + wait round trip, the similarity pass
    /// over the first block alone, the select pass over it alone, and both
    /// passes over every block in one submit. For `squire bench kernels
    /// --profile`; the numbers steer tuning, they are not results.
    pub fn profile_top_k(
        &self,
        db: &GpuDatabase,
        precision: Precision,
        queries: &[f32],
        dim: usize,
        k: usize,
        runs: usize,
    ) -> Result<Vec<(&'static str, f64)>> {
        let total: usize = db.chunks.iter().map(|c| c.rows).sum();
        let k = k.min(total).clamp(1, MAX_K);
        let half = precision == Precision::F16;
        let block = BLOCK_ROWS.min(db.chunks.iter().map(|c| c.rows).max().unwrap_or(1));
        // As many queries as one top-k submit holds.
        let m = (queries.len() / dim).min((SCORES_BYTES / (block * 4)).max(1));
        let queries = &queries[..m * dim];
        let narrow = use_narrow(m, dim, half);
        let laid_out = if narrow {
            narrow_queries(queries, dim)
        } else {
            queries.to_vec()
        };
        let qbuf = self.storage("queries", bytemuck::cast_slice(&laid_out));
        let sbuf = self.empty("scores", (m.max(1) * block * 4) as u64);
        let mk = |l| self.empty(l, (m.max(1) * k * 4) as u64);
        let lists = [
            mk("keys a"),
            mk("ids a"),
            mk("count a"),
            mk("keys b"),
            mk("ids b"),
            mk("count b"),
        ];
        let time = |record: &dyn Fn(&mut wgpu::CommandEncoder) -> Result<()>| -> Result<f64> {
            let mut best = f64::INFINITY;
            for _ in 0..runs.max(1) {
                let mut encoder = self.encoder();
                record(&mut encoder)?;
                let t = std::time::Instant::now();
                self.queue.submit([encoder.finish()]);
                self.device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .map_err(|e| KernelError::Device(format!("waiting for the GPU: {e}")))?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            Ok(best)
        };
        let sim = |encoder: &mut wgpu::CommandEncoder, chunk: &Chunk, start: usize, rows: usize| {
            let params = SimParams::new(m, rows, dim, start, block, false);
            self.record_similarity(encoder, half, narrow, params, None, &qbuf, chunk, &sbuf);
        };
        let select =
            |encoder: &mut wgpu::CommandEncoder, gbase: usize, rows: usize| -> Result<()> {
                let sp = self.uniform(&SelectParams {
                    k: k as u32,
                    rows: rows as u32,
                    stride: block as u32,
                    gbase: as_u32(gbase, "row id")?,
                });
                let group = self.bind(
                    &self.pipelines.select,
                    &[
                        &sp, &sbuf, &lists[0], &lists[1], &lists[2], &lists[3], &lists[4],
                        &lists[5],
                    ],
                );
                Self::dispatch(encoder, &self.pipelines.select, &group, (m as u32, 1));
                Ok(())
            };
        let (c0, s0, r0) = self
            .blocks(db)
            .next()
            .ok_or_else(|| KernelError::Shape("empty database".into()))?;
        let blocks = self.blocks(db).count();
        Ok(vec![
            ("blocks", blocks as f64),
            ("empty submit + wait", time(&|_| Ok(()))?),
            (
                "similarity, one block",
                time(&|e| {
                    sim(e, c0, s0, r0);
                    Ok(())
                })?,
            ),
            ("select, one block", time(&|e| select(e, c0.row0 + s0, r0))?),
            (
                "similarity, every block",
                time(&|e| {
                    for (c, s, r) in self.blocks(db) {
                        sim(e, c, s, r);
                    }
                    Ok(())
                })?,
            ),
            (
                "similarity + select, every block",
                time(&|e| {
                    for (c, s, r) in self.blocks(db) {
                        sim(e, c, s, r);
                        select(e, c.row0 + s, r)?;
                    }
                    Ok(())
                })?,
            ),
        ])
    }

    /// Device memory bandwidth in GB/s (bytes read + written per second) of a
    /// buffer-to-buffer copy of `bytes` (capped at the adapter's buffer
    /// limit), best of `runs`: the ceiling a streaming kernel can reach.
    pub fn copy_bandwidth(&self, bytes: u64, runs: usize) -> Result<f64> {
        let bytes = bytes.min(self.max_binding) & !3;
        let (a, b) = (self.empty("probe a", bytes), self.empty("probe b", bytes));
        let mut best = 0f64;
        for _ in 0..runs.max(1) {
            let mut encoder = self.encoder();
            encoder.copy_buffer_to_buffer(&a, 0, &b, 0, bytes);
            let t = std::time::Instant::now();
            self.queue.submit([encoder.finish()]);
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| KernelError::Device(format!("waiting for the GPU: {e}")))?;
            best = best.max(2.0 * bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        Ok(best)
    }

    fn fits(&self, values: usize, what: &str) -> Result<()> {
        if (values * 4) as u64 > self.max_binding {
            return Err(KernelError::Shape(format!(
                "{what}: {values} values exceed one GPU buffer ({} bytes); split the batch",
                self.max_binding
            )));
        }
        Ok(())
    }
}
