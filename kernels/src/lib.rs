//! Squire's compute kernels: GeM pooling (GeM+, Regional-GeM, Scale-GeM),
//! similarity and top-k, and SuperGlobal's Gram-matrix refinement, each with a
//! CPU (rayon) backend and a wgpu (WGSL) backend that give the same answers.
//!
//! Used by every other crate and depends on none of them. [`Compute`] is the
//! one entry point: pick a backend with [`DeviceChoice`] (`auto` takes a
//! hardware GPU when there is one and the CPU otherwise), upload a database
//! once with [`Compute::upload`], then score any number of query batches
//! against it. The [`cpu`] module's functions are also usable directly.

pub mod cpu;
mod error;
pub mod gpu;
pub mod probe;
mod types;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use half::f16;

pub use error::{KernelError, Result};
pub use gpu::{GpuContext, GpuOptions};
pub use types::{
    FeatureMaps, GemParams, Metric, Precision, RegionalGemParams, ScaleGemMode, Scored,
};

use types::rows_of;

/// Which backend `--device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// A hardware GPU when one is present, else the CPU (software adapters
    /// such as lavapipe are for testing and never chosen here).
    #[default]
    Auto,
    /// The CPU backend.
    Cpu,
    /// Any wgpu adapter with compute shaders, software ones included; an
    /// error when there is none.
    Gpu,
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "gpu" => Ok(DeviceChoice::Gpu),
            other => Err(format!(
                "unknown device {other:?} (expected auto, cpu or gpu)"
            )),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Gpu => "gpu",
        })
    }
}

/// A kernel backend: the CPU, or an open GPU device. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Compute {
    gpu: Option<Arc<GpuContext>>,
}

/// Database vectors uploaded to a backend, resident across queries.
#[derive(Debug)]
pub struct Database {
    dim: usize,
    rows: usize,
    precision: Precision,
    store: Store,
}

#[derive(Debug)]
enum Store {
    Cpu {
        values: CpuValues,
        inv_norms: Vec<f32>,
    },
    Gpu(gpu::GpuDatabase),
}

#[derive(Debug)]
enum CpuValues {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Database {
    /// Vector length.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether the database holds no rows.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Storage precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes of vector storage.
    pub fn bytes(&self) -> usize {
        self.rows * self.dim * self.precision.bytes()
    }
}

impl Compute {
    /// The CPU backend.
    pub fn cpu() -> Compute {
        Compute { gpu: None }
    }

    /// Any GPU adapter, software ones included (for tests on lavapipe).
    pub fn gpu(options: &GpuOptions) -> Result<Compute> {
        Ok(Compute {
            gpu: Some(Arc::new(GpuContext::open(
                gpu::AdapterPolicy::Any,
                options,
            )?)),
        })
    }

    /// The backend `choice` names. `Auto` never fails: without a hardware
    /// GPU it logs one line saying why and returns the CPU backend.
    pub fn new(choice: DeviceChoice) -> Result<Compute> {
        match choice {
            DeviceChoice::Cpu => Ok(Compute::cpu()),
            DeviceChoice::Gpu => Compute::gpu(&GpuOptions::default()),
            DeviceChoice::Auto => {
                match GpuContext::open(gpu::AdapterPolicy::HardwareOnly, &GpuOptions::default()) {
                    Ok(ctx) => {
                        tracing::info!("device auto: using GPU {}", ctx.describe());
                        Ok(Compute {
                            gpu: Some(Arc::new(ctx)),
                        })
                    }
                    Err(e) => {
                        tracing::info!(
                            "device auto: no hardware GPU ({}); using the CPU backend",
                            short_reason(&e)
                        );
                        Ok(Compute::cpu())
                    }
                }
            }
        }
    }

    /// "cpu", or the GPU adapter in words.
    pub fn describe(&self) -> String {
        match &self.gpu {
            None => format!("cpu ({} threads)", rayon::current_num_threads()),
            Some(g) => format!("gpu: {}", g.describe()),
        }
    }

    /// Whether this is the GPU backend.
    pub fn is_gpu(&self) -> bool {
        self.gpu.is_some()
    }

    /// GPU only: where a top-k call's time goes (see
    /// [`GpuContext::profile_top_k`]); `None` on the CPU backend.
    pub fn profile_top_k(
        &self,
        db: &Database,
        queries: &[f32],
        k: usize,
        runs: usize,
    ) -> Result<Option<Vec<(&'static str, f64)>>> {
        match (&self.gpu, &db.store) {
            (Some(g), Store::Gpu(d)) => Ok(Some(g.profile_top_k(
                d,
                db.precision,
                queries,
                db.dim,
                k,
                runs,
            )?)),
            _ => Ok(None),
        }
    }

    /// The open GPU device, when this is the GPU backend.
    pub fn gpu_context(&self) -> Option<&GpuContext> {
        self.gpu.as_deref()
    }

    fn name(&self) -> &'static str {
        if self.gpu.is_some() {
            "gpu"
        } else {
            "cpu"
        }
    }

    /// Uploads `rows` (`n × dim`, row-major) for similarity search. With
    /// `Precision::F16` values are rounded to half precision once, here, so
    /// both backends score the same vectors. Row norms are kept for cosine.
    pub fn upload(&self, rows: &[f32], dim: usize, precision: Precision) -> Result<Database> {
        let n = rows_of(rows, dim, "database")?;
        let (values, inv_norms) = match precision {
            Precision::F32 => {
                let inv = rows
                    .chunks_exact(dim)
                    .map(cpu::inv_norm)
                    .collect::<Vec<_>>();
                (CpuValues::F32(rows.to_vec()), inv)
            }
            Precision::F16 => {
                let h: Vec<f16> = rows.iter().map(|&v| f16::from_f32(v)).collect();
                let inv = h
                    .chunks_exact(dim)
                    .map(|r| {
                        let f: Vec<f32> = r.iter().map(|v| v.to_f32()).collect();
                        cpu::inv_norm(&f)
                    })
                    .collect();
                (CpuValues::F16(h), inv)
            }
        };
        let store = match &self.gpu {
            None => Store::Cpu { values, inv_norms },
            Some(g) => {
                let rounded: Vec<f32>;
                let src = match &values {
                    CpuValues::F32(v) => v.as_slice(),
                    CpuValues::F16(h) => {
                        rounded = h.iter().map(|v| v.to_f32()).collect();
                        &rounded
                    }
                };
                Store::Gpu(g.upload(src, &inv_norms, dim, precision)?)
            }
        };
        Ok(Database {
            dim,
            rows: n,
            precision,
            store,
        })
    }

    fn check_db<'a>(&self, db: &'a Database, queries: &[f32]) -> Result<usize> {
        let nq = rows_of(queries, db.dim, "queries")?;
        match (&db.store, &self.gpu) {
            (Store::Cpu { .. }, None) | (Store::Gpu(_), Some(_)) => Ok(nq),
            (Store::Cpu { .. }, Some(_)) => Err(KernelError::WrongBackend {
                uploaded: "cpu",
                used: self.name(),
            }),
            (Store::Gpu(_), None) => Err(KernelError::WrongBackend {
                uploaded: "gpu",
                used: self.name(),
            }),
        }
    }

    fn prepare<'q>(queries: &'q [f32], dim: usize, metric: Metric) -> std::borrow::Cow<'q, [f32]> {
        match metric {
            Metric::InnerProduct => std::borrow::Cow::Borrowed(queries),
            Metric::Cosine => {
                let mut q = queries.to_vec();
                q.chunks_exact_mut(dim).for_each(cpu::l2_normalize);
                std::borrow::Cow::Owned(q)
            }
        }
    }

    /// The `k` best rows for each query (`q × dim`), best first, ties by
    /// ascending row; `min(k, rows)` per query.
    pub fn top_k(
        &self,
        db: &Database,
        queries: &[f32],
        k: usize,
        metric: Metric,
    ) -> Result<Vec<Vec<Scored>>> {
        self.check_db(db, queries)?;
        let q = Self::prepare(queries, db.dim, metric);
        let cosine = metric == Metric::Cosine;
        match &db.store {
            Store::Cpu { values, inv_norms } => {
                let norms = cosine.then_some(inv_norms.as_slice());
                Ok(cpu::topk_rows(rows_ref(values), db.dim, norms, &q, k))
            }
            Store::Gpu(g) => self
                .gpu_ctx()?
                .top_k(g, db.precision, cosine, &q, db.dim, k),
        }
    }

    /// Every score: `q × rows`, row-major by query.
    pub fn scores(&self, db: &Database, queries: &[f32], metric: Metric) -> Result<Vec<f32>> {
        self.check_db(db, queries)?;
        let q = Self::prepare(queries, db.dim, metric);
        let cosine = metric == Metric::Cosine;
        match &db.store {
            Store::Cpu { values, inv_norms } => Ok(cpu::scores_rows(
                rows_ref(values),
                db.dim,
                cosine.then_some(inv_norms.as_slice()),
                &q,
            )),
            Store::Gpu(g) => self.gpu_ctx()?.scores(g, db.precision, cosine, &q, db.dim),
        }
    }

    fn gpu_ctx(&self) -> Result<&GpuContext> {
        self.gpu.as_deref().ok_or(KernelError::WrongBackend {
            uploaded: "gpu",
            used: "cpu",
        })
    }

    /// GeM pooling of every channel: `n × c`.
    pub fn gem(&self, maps: FeatureMaps<'_>, params: GemParams) -> Result<Vec<f32>> {
        params.check()?;
        match &self.gpu {
            None => cpu::gem(maps, params),
            Some(g) => g.gem(maps, params),
        }
    }

    /// Regional-GeM: same shape as the input.
    pub fn regional_gem(
        &self,
        maps: FeatureMaps<'_>,
        params: RegionalGemParams,
    ) -> Result<Vec<f32>> {
        params.check()?;
        match &self.gpu {
            None => cpu::regional_gem(maps, params),
            Some(g) => g.regional_gem(maps, params),
        }
    }

    /// Scale-GeM over one `n × dim` matrix per scale: `n × dim`, L2-normalised.
    pub fn scale_gem(&self, scales: &[&[f32]], dim: usize, mode: ScaleGemMode) -> Result<Vec<f32>> {
        let n = cpu::check_scales(scales, dim)?;
        if let ScaleGemMode::Power(p) = mode {
            if !(p.is_finite() && p > 0.0) {
                return Err(KernelError::Parameter(format!(
                    "Scale-GeM power must be > 0, got {p}"
                )));
            }
        }
        match &self.gpu {
            None => cpu::scale_gem(scales, dim, mode),
            Some(g) => g.scale_gem(scales, n, dim, mode),
        }
    }

    /// `X Xᵀ` for `X` = `m × dim`: `m × m`.
    pub fn gram(&self, x: &[f32], dim: usize) -> Result<Vec<f32>> {
        rows_of(x, dim, "Gram matrix input")?;
        match &self.gpu {
            None => cpu::gram(x, dim),
            Some(g) => g.gram(x, dim),
        }
    }

    /// SuperGlobal's database-side refinement of `x` (`m × dim`): the Gram
    /// matrix, then each row averaged with its `k` most similar other rows
    /// weighted by `beta · s_ij` (see [`cpu::refine`]).
    pub fn refine(&self, x: &[f32], dim: usize, k: usize, beta: f32) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.refine_into(x, dim, k, beta, &mut out)?;
        Ok(out)
    }

    /// [`Compute::refine`] into `out` (resized to `m × dim`): a caller that
    /// keeps `out` across queries saves a fresh allocation's page faults.
    pub fn refine_into(
        &self,
        x: &[f32],
        dim: usize,
        k: usize,
        beta: f32,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let m = rows_of(x, dim, "refinement input")?;
        cpu::check_refine(m, k, beta)?;
        match &self.gpu {
            None => {
                // The Gram matrix and its bands live in per-thread buffers,
                // taken out and put back (a nested call finds them empty).
                let (mut s, mut scratch) =
                    GRAM_BUFFERS.with(|c| std::mem::take(&mut *c.borrow_mut()));
                let result = cpu::gram_into(x, dim, &mut s, &mut scratch)
                    .and_then(|()| cpu::refine_into(x, &s, dim, k, beta, out));
                GRAM_BUFFERS.with(|c| *c.borrow_mut() = (s, scratch));
                result
            }
            Some(g) => {
                *out = g.refine(x, dim, k, beta)?;
                Ok(())
            }
        }
    }
}

thread_local! {
    /// The CPU refinement's Gram matrix and band scratch, kept per thread across queries.
    static GRAM_BUFFERS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

fn rows_ref(values: &CpuValues) -> cpu::RowsRef<'_> {
    match values {
        CpuValues::F32(v) => cpu::RowsRef::F32(v),
        CpuValues::F16(v) => cpu::RowsRef::F16(v),
    }
}

/// The reason inside a `NoAdapter` error, for one log line.
fn short_reason(e: &KernelError) -> String {
    match e {
        KernelError::NoAdapter(r) => r.clone(),
        other => other.to_string(),
    }
}
