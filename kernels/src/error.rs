//! The error type of the kernels crate.

/// Everything a kernel call can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// `--device gpu` (or [`crate::Compute::gpu`]) found no adapter.
    #[error(
        "no GPU adapter found ({0}); install a Vulkan or OpenGL driver (on Debian: apt-get install mesa-vulkan-drivers) \
         or use --device cpu"
    )]
    NoAdapter(String),
    /// The adapter was found but refused to open a device or a buffer.
    #[error("GPU device error: {0}")]
    Device(String),
    /// Inputs whose sizes do not agree (a buffer that is not `n × dim`, ...).
    #[error("{0}")]
    Shape(String),
    /// A parameter outside its valid range (p ≤ 0, k too large for the device, ...).
    #[error("invalid parameter: {0}")]
    Parameter(String),
    /// A database uploaded to one backend was used with another.
    #[error("this database was uploaded to the {uploaded} backend, not the {used} backend")]
    WrongBackend {
        /// Where the database lives.
        uploaded: &'static str,
        /// The backend it was used with.
        used: &'static str,
    },
}

/// The kernels crate's result type.
pub type Result<T> = std::result::Result<T, KernelError>;
