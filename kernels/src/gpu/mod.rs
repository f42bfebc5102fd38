//! The wgpu backend: WGSL compute shaders (in `shaders/`) for similarity,
//! top-k selection, GeM pooling, Scale-GeM and Gram refinement.
//!
//! One [`GpuContext`] holds the device, its queue, every pipeline (compiled
//! once) and grow-only scratch buffers reused across calls. A database is
//! uploaded once into one or more storage buffers, each within the adapter's
//! binding limit (128 MiB on lavapipe), and stays resident; queries stream
//! over its blocks.

mod ops;

use std::borrow::Cow;
use std::sync::Mutex;

use wgpu::util::DeviceExt;

use crate::error::{KernelError, Result};

pub(crate) use ops::GpuDatabase;

/// Which adapters may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdapterPolicy {
    /// Hardware only (discrete, integrated or virtual GPUs): `--device auto`.
    HardwareOnly,
    /// Anything with compute shaders, software rasterisers (lavapipe,
    /// llvmpipe) included: `--device gpu` and the parity tests.
    Any,
}

/// Options for opening the GPU backend.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Largest storage buffer a database chunk may use, in bytes; `None` =
    /// the adapter's limit. Tests set it low to exercise streaming over
    /// several chunks on small data.
    pub max_chunk_bytes: Option<u64>,
}

struct Pipelines {
    /// f32 and f16 base storage.
    similarity: [wgpu::ComputePipeline; 2],
    /// The few-query (memory-bound) similarity, f32 and f16.
    similarity_narrow: [wgpu::ComputePipeline; 2],
    select: wgpu::ComputePipeline,
    gem: wgpu::ComputePipeline,
    rgem: wgpu::ComputePipeline,
    sgem: wgpu::ComputePipeline,
    refine: wgpu::ComputePipeline,
}

/// An open GPU device with its compiled pipelines.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    pipelines: Pipelines,
    max_chunk_bytes: u64,
    max_binding: u64,
    scratch: Mutex<ops::Scratch>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.describe())
            .finish()
    }
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn backend_rank(b: wgpu::Backend) -> u8 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    }
}

fn adapter_line(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

impl GpuContext {
    /// Opens the best adapter the policy allows (discrete before integrated
    /// before virtual before software; Vulkan/Metal/DX12 before GL). Honours
    /// `WGPU_BACKEND` (e.g. `vulkan`, `gl`).
    pub(crate) fn open(policy: AdapterPolicy, options: &GpuOptions) -> Result<GpuContext> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let mut adapters: Vec<wgpu::Adapter> =
            pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
                .into_iter()
                .filter(|a| {
                    a.get_downlevel_capabilities()
                        .flags
                        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
                })
                .collect();
        let seen: Vec<String> = adapters
            .iter()
            .map(|a| adapter_line(&a.get_info()))
            .collect();
        if policy == AdapterPolicy::HardwareOnly {
            adapters.retain(|a| a.get_info().device_type != wgpu::DeviceType::Cpu);
        }
        adapters.sort_by_key(|a| {
            let i = a.get_info();
            (rank(i.device_type), backend_rank(i.backend))
        });
        let Some(adapter) = adapters.into_iter().next() else {
            return Err(KernelError::NoAdapter(if seen.is_empty() {
                "wgpu found no adapter with compute shaders on any backend".into()
            } else {
                format!("only software adapters were found: {}", seen.join(", "))
            }));
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("squire-kernels"),
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| KernelError::Device(format!("{}: {e}", adapter_line(&info))))?;
        let pipelines = Pipelines::build(&device)?;
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_chunk_bytes = options
            .max_chunk_bytes
            .map_or(max_binding, |b| b.clamp(16, max_binding))
            & !15;
        Ok(GpuContext {
            device,
            queue,
            info,
            pipelines,
            max_chunk_bytes,
            max_binding,
            scratch: Mutex::new(ops::Scratch::default()),
        })
    }

    /// The adapter in words, e.g. "NVIDIA H200 (Vulkan, DiscreteGpu)".
    pub fn describe(&self) -> String {
        adapter_line(&self.info)
    }

    /// Whether the adapter is a software rasteriser (lavapipe, llvmpipe).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    fn storage(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        // Bindings must not be empty: pad to at least 4 bytes.
        let padded;
        let contents = if bytes.len() < 4 {
            padded = [0u8; 4];
            &padded[..]
        } else {
            bytes
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    fn empty(&self, label: &str, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    fn uniform<T: bytemuck::Pod>(&self, value: &T) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// A bind group whose first entry is `params`' range at `offset` (one
    /// uniform struct of `size` bytes) and the rest whole buffers.
    fn bind_params(
        &self,
        pipeline: &wgpu::ComputePipeline,
        params: (&wgpu::Buffer, u64, u64),
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: params.0,
                offset: params.1,
                size: wgpu::BufferSize::new(params.2),
            }),
        }];
        entries.extend(
            buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: b.as_entire_binding(),
                }),
        );
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// The uniform-offset alignment of the device.
    fn uniform_align(&self) -> u64 {
        u64::from(self.device.limits().min_uniform_buffer_offset_alignment).max(16)
    }

    fn bind(&self, pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Records one dispatch in its own compute pass.
    fn dispatch(
        encoder: &mut wgpu::CommandEncoder,
        pipeline: &wgpu::ComputePipeline,
        group: &wgpu::BindGroup,
        (x, y): (u32, u32),
    ) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: None,
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, group, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Submits `encoder` after adding copies of `reads` (buffer, bytes) into
    /// staging buffers, waits, and returns their contents.
    fn submit_and_read(
        &self,
        mut encoder: wgpu::CommandEncoder,
        reads: &[(&wgpu::Buffer, u64)],
    ) -> Result<Vec<Vec<u8>>> {
        let staging: Vec<wgpu::Buffer> = reads
            .iter()
            .map(|&(src, size)| {
                let size = size.max(4).next_multiple_of(4);
                let dst = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.copy_buffer_to_buffer(src, 0, &dst, 0, size);
                dst
            })
            .collect();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        self.queue.submit([encoder.finish()]);
        for b in &staging {
            b.map_async(wgpu::MapMode::Read, .., |_| {});
        }
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| KernelError::Device(format!("waiting for the GPU: {e}")))?;
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(KernelError::Device(e.to_string()));
        }
        let mut out = Vec::with_capacity(staging.len());
        for (b, &(_, size)) in staging.iter().zip(reads) {
            let view = b
                .get_mapped_range(..)
                .map_err(|e| KernelError::Device(format!("reading back: {e}")))?;
            out.push(view[..size as usize].to_vec());
            drop(view);
            b.unmap();
        }
        Ok(out)
    }
}

impl Pipelines {
    fn build(device: &wgpu::Device) -> Result<Pipelines> {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        // Naga's loop-bounding guard is off: it keeps compilers from
        // unrolling the inner loops (measured on an H200: ~100× slower
        // similarity). Bounds checks stay on.
        let checks = wgpu::ShaderRuntimeChecks {
            force_loop_bounding: false,
            ..wgpu::ShaderRuntimeChecks::checked()
        };
        let module = |label: &str, src: Cow<'static, str>| {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(src),
            };
            // SAFETY: every loop in these shaders runs to a bound taken from
            // a uniform parameter or a constant, so no shader can loop
            // forever without the guard; buffer and array bounds checks stay.
            unsafe { device.create_shader_module_trusted(desc, checks) }
        };
        let pipeline = |m: &wgpu::ShaderModule, label: &str, constants: &[(&str, f64)]| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: None,
                module: m,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    ..Default::default()
                },
                cache: None,
            })
        };
        let common = include_str!("shaders/common.wgsl");
        let with_common = |src: &str| Cow::Owned(format!("{common}\n{src}"));
        let sim = module(
            "similarity",
            Cow::Borrowed(include_str!("shaders/similarity.wgsl")),
        );
        let similarity = [
            pipeline(&sim, "similarity", &[("HALF", 0.0)]),
            pipeline(&sim, "similarity", &[("HALF", 1.0)]),
        ];
        let narrow = module(
            "similarity (few queries)",
            Cow::Borrowed(include_str!("shaders/similarity_narrow.wgsl")),
        );
        let similarity_narrow = [
            pipeline(&narrow, "similarity_narrow", &[("HALF", 0.0)]),
            pipeline(&narrow, "similarity_narrow", &[("HALF", 1.0)]),
        ];
        let select = pipeline(
            &module("select", Cow::Borrowed(include_str!("shaders/select.wgsl"))),
            "select",
            &[],
        );
        let gem = pipeline(
            &module("gem", with_common(include_str!("shaders/gem.wgsl"))),
            "gem",
            &[],
        );
        let rgem = pipeline(
            &module("rgem", with_common(include_str!("shaders/rgem.wgsl"))),
            "rgem",
            &[],
        );
        let sgem = pipeline(
            &module("sgem", with_common(include_str!("shaders/sgem.wgsl"))),
            "sgem",
            &[],
        );
        let refine = pipeline(
            &module("refine", Cow::Borrowed(include_str!("shaders/refine.wgsl"))),
            "refine",
            &[],
        );
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(KernelError::Device(format!(
                "compiling the compute shaders: {e}"
            )));
        }
        Ok(Pipelines {
            similarity,
            similarity_narrow,
            select,
            gem,
            rgem,
            sgem,
            refine,
        })
    }
}

/// Workgroup grid for `groups` workgroups: (x, y) with x ≤ 65,535.
fn grid(groups: usize) -> (u32, u32) {
    let x = groups.clamp(1, 65_535);
    (x as u32, groups.div_ceil(x).max(1) as u32)
}
