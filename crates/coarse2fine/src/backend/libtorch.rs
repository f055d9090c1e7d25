//! What the libtorch backend needs before it touches a GPU.
//!
//! PyTorch's CUDA kernels live in `libtorch_cuda.so`. Nothing in the binary refers to it by
//! symbol (they register themselves when the library loads), so the linker's `--as-needed`
//! leaves it out and libtorch would see no GPU. It is loaded here, once, from the same
//! search path as `libtorch_cpu.so`.

use std::sync::OnceLock;

use burn::tensor::Device;

use crate::error::{Error, Result};

/// libtorch's CPU (`None`) or CUDA GPU `n`. burn 0.22 marks its LibTorch backend
/// deprecated; it is still the CUDA path that builds from the package registries
/// (docs/gpu.md).
#[allow(deprecated)]
pub(super) fn device(gpu: Option<usize>) -> Result<Device> {
    match gpu {
        None => Ok(Device::libtorch()),
        Some(n) => {
            check_gpu(n)?;
            Ok(Device::libtorch_cuda(n))
        }
    }
}

static CUDA_LIBRARY: OnceLock<std::result::Result<libloading::Library, String>> = OnceLock::new();

/// Checks that libtorch sees CUDA GPU `n`; otherwise a one-line error that says why.
fn check_gpu(n: usize) -> Result<()> {
    let loaded = CUDA_LIBRARY.get_or_init(|| {
        // Loading a shared library runs its initialisers; libtorch_cuda's only register
        // kernels with the libtorch already loaded.
        #[allow(unsafe_code)]
        let lib = unsafe { libloading::Library::new("libtorch_cuda.so") };
        lib.map_err(|e| e.to_string())
    });
    if let Err(e) = loaded {
        return Err(Error::invalid(format!(
            "backend libtorch-cuda:{n}: libtorch's CUDA library did not load ({e}); \
             use a CUDA build of PyTorch 2.9.0 and put its torch/lib folder on LD_LIBRARY_PATH"
        )));
    }
    let count = tch::Cuda::device_count();
    if count <= n as i64 {
        let seen = match count {
            0 => "no CUDA GPU found".to_string(),
            c => format!("libtorch sees {c} CUDA GPU(s), numbered from 0"),
        };
        return Err(Error::invalid(format!(
            "backend libtorch-cuda:{n}: {seen}; check the NVIDIA driver with nvidia-smi"
        )));
    }
    Ok(())
}
