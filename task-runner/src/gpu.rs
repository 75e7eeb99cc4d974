//! Whether this node's GPU can take a proving stage, decided before the runner claims a task.
//!
//! A runner without a suitable GPU exits 69 (`exit::UNSUITABLE_NODE`): the dispatcher and the
//! Job's podFailurePolicy retry it elsewhere without counting a failure. The message names what
//! was found, because "no driver", "no device" and "a 16 GB card" call for different fixes.
//! The decision (`choose`) is plain logic over a device list, unit-tested with made-up devices;
//! reading the real list (`probe`, the `cuda` feature) loads the driver with cudarc at run time,
//! so the same binary starts on a machine without CUDA and says so.

use std::fmt;

/// One CUDA device as the driver reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    /// The CUDA ordinal within this process's view (`CUDA_VISIBLE_DEVICES` applies).
    pub ordinal: usize,
    pub name: String,
    /// Compute capability (major, minor), e.g. (9, 0) for Hopper.
    pub compute: (u32, u32),
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// GPU utilisation in percent from NVML, when NVML answers.
    pub utilization_percent: Option<u32>,
}

const GIB: f64 = (1u64 << 30) as f64;

impl fmt::Display for GpuInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (GPU {}, compute {}.{}, {:.1} GiB free of {:.1} GiB",
            self.name,
            self.ordinal,
            self.compute.0,
            self.compute.1,
            self.free_bytes as f64 / GIB,
            self.total_bytes as f64 / GIB
        )?;
        match self.utilization_percent {
            Some(p) => write!(f, ", {p}% busy)"),
            None => write!(f, ")"),
        }
    }
}

/// What a proving stage needs from its GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuNeeds {
    pub min_compute: (u32, u32),
    pub min_free_bytes: u64,
}

impl GpuNeeds {
    /// SP1's GPU prover supports compute capability 8.6 and up, and refuses cards under ~20 GiB
    /// (it wants 24 GB-class GPUs); the free-memory floor is a stage-profile setting
    /// (`PROOFJOBS_GPU_MIN_FREE_GIB` of the runner's environment contract).
    pub const DEFAULT: GpuNeeds = GpuNeeds { min_compute: (8, 6), min_free_bytes: 20 << 30 };

    pub fn with_min_free_gib(min_free_gib: Option<f64>) -> GpuNeeds {
        let mut needs = GpuNeeds::DEFAULT;
        if let Some(gib) = min_free_gib {
            needs.min_free_bytes = (gib * GIB) as u64;
        }
        needs
    }
}

impl fmt::Display for GpuNeeds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "compute capability >= {}.{} and >= {:.1} GiB free",
            self.min_compute.0,
            self.min_compute.1,
            self.min_free_bytes as f64 / GIB
        )
    }
}

/// The GPU this runner proves on: device 0 of its view, since a runner owns exactly one GPU (the
/// device plugin's allocation, or `CUDA_VISIBLE_DEVICES`) and SP1's prover works on device 0.
/// `probed` is the driver's answer, or why there is none. The error is the exit-69 message.
pub fn choose<'a>(probed: &'a Result<Vec<GpuInfo>, String>, needs: &GpuNeeds) -> Result<&'a GpuInfo, String> {
    let devices = match probed {
        Ok(devices) => devices,
        Err(why) => return Err(format!("no usable GPU on this node: {why}")),
    };
    let Some(gpu) = devices.first() else {
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").map(|v| format!(" (CUDA_VISIBLE_DEVICES={v:?})")).unwrap_or_default();
        return Err(format!("no usable GPU on this node: the NVIDIA driver is loaded but shows no CUDA device{visible}"));
    };
    let mut problems = Vec::new();
    if gpu.compute < needs.min_compute {
        problems.push(format!(
            "compute capability {}.{} is below {}.{}",
            gpu.compute.0, gpu.compute.1, needs.min_compute.0, needs.min_compute.1
        ));
    }
    if gpu.free_bytes < needs.min_free_bytes {
        problems.push(format!(
            "{:.1} GiB free is below the {:.1} GiB this stage needs",
            gpu.free_bytes as f64 / GIB,
            needs.min_free_bytes as f64 / GIB
        ));
    }
    if problems.is_empty() {
        Ok(gpu)
    } else {
        Err(format!("the GPU on this node cannot run this stage: found {gpu}: {}; needs {needs}", problems.join(", ")))
    }
}

/// Reads every visible CUDA device through the driver, loaded at run time.
#[cfg(feature = "cuda")]
pub fn probe() -> Result<Vec<GpuInfo>, String> {
    use cudarc::driver::{result, sys, CudaContext};

    // cudarc panics on first use when the library is absent; ask first.
    if !unsafe { sys::is_culib_present() } {
        return Err("the NVIDIA driver library (libcuda.so.1) is not installed or not on the library path".into());
    }
    let driver = |what: &str, e: result::DriverError| format!("the NVIDIA driver failed to {what}: {e}");
    result::init().map_err(|e| driver("initialise", e))?;
    let count = result::device::get_count().map_err(|e| driver("count devices", e))?;
    let nvml = nvml_wrapper::Nvml::init().ok();
    let mut devices = Vec::new();
    for ordinal in 0..count.max(0) as usize {
        let ctx = CudaContext::new(ordinal).map_err(|e| driver(&format!("open GPU {ordinal}"), e))?;
        let name = ctx.name().map_err(|e| driver("read the device name", e))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| driver("read the compute capability", e))?;
        let (free, total) = ctx.mem_get_info().map_err(|e| driver("read device memory", e))?;
        let utilization_percent = ctx.uuid().ok().and_then(|uuid| {
            let device = nvml.as_ref()?.device_by_uuid(nvml_uuid(&uuid.bytes)).ok()?;
            device.utilization_rates().ok().map(|u| u.gpu)
        });
        devices.push(GpuInfo {
            ordinal,
            name,
            compute: (major.max(0) as u32, minor.max(0) as u32),
            total_bytes: total as u64,
            free_bytes: free as u64,
            utilization_percent,
        });
    }
    Ok(devices)
}

/// Samples the memory in use on this process's GPU (device 0) from NVML every 100 ms, for the peak
/// a runner or benchmark reports. `None` where NVML does not answer.
#[cfg(feature = "cuda")]
pub struct GpuMemoryPeak {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(feature = "cuda")]
impl GpuMemoryPeak {
    pub fn start() -> Option<GpuMemoryPeak> {
        use std::sync::{
            atomic::{AtomicBool, AtomicU64, Ordering},
            Arc,
        };
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return None;
        }
        let uuid = cudarc::driver::CudaContext::new(0).ok()?.uuid().ok()?;
        let nvml = nvml_wrapper::Nvml::init().ok()?;
        nvml.device_by_uuid(nvml_uuid(&uuid.bytes)).ok()?.memory_info().ok()?;
        let (peak, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (p, s) = (peak.clone(), stop.clone());
        let name = nvml_uuid(&uuid.bytes);
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(info) = nvml.device_by_uuid(name.as_str()).and_then(|d| d.memory_info()) {
                    p.fetch_max(info.used, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        Some(GpuMemoryPeak { peak, stop })
    }

    /// The largest amount of device memory seen in use so far, in MiB.
    pub fn peak_mb(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed) >> 20
    }
}

#[cfg(feature = "cuda")]
impl Drop for GpuMemoryPeak {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Without the `cuda` feature there is no GPU prover, so there is nothing to probe for.
#[cfg(not(feature = "cuda"))]
pub fn probe() -> Result<Vec<GpuInfo>, String> {
    Err("this task-runner was built without the `cuda` feature".into())
}

/// NVML names devices by the driver's UUID in its text form; CUDA ordinals and NVML indices
/// differ under `CUDA_VISIBLE_DEVICES`, the UUID does not.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn nvml_uuid(bytes: &[std::os::raw::c_char; 16]) -> String {
    let b: Vec<u8> = bytes.iter().map(|&c| c as u8).collect();
    let hex = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("GPU-{}-{}-{}-{}-{}", hex(0..4), hex(4..6), hex(6..8), hex(8..10), hex(10..16))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(name: &str, compute: (u32, u32), free_gib: u64, total_gib: u64) -> GpuInfo {
        GpuInfo {
            ordinal: 0,
            name: name.into(),
            compute,
            total_bytes: total_gib << 30,
            free_bytes: free_gib << 30,
            utilization_percent: Some(3),
        }
    }

    #[test]
    fn a_large_recent_gpu_qualifies() {
        let probed = Ok(vec![gpu("NVIDIA H200", (9, 0), 139, 140)]);
        let chosen = choose(&probed, &GpuNeeds::DEFAULT).unwrap();
        assert_eq!(chosen.name, "NVIDIA H200");
        assert_eq!(chosen.to_string(), "NVIDIA H200 (GPU 0, compute 9.0, 139.0 GiB free of 140.0 GiB, 3% busy)");
    }

    #[test]
    fn an_old_gpu_is_refused_by_name_and_capability() {
        let probed = Ok(vec![gpu("Tesla T4", (7, 5), 14, 15)]);
        let err = choose(&probed, &GpuNeeds::DEFAULT).unwrap_err();
        assert!(err.contains("Tesla T4"), "{err}");
        assert!(err.contains("compute capability 7.5 is below 8.6"), "{err}");
        assert!(err.contains("14.0 GiB free is below the 20.0 GiB"), "{err}");
    }

    #[test]
    fn an_ampere_datacenter_card_below_8_6_is_refused() {
        // The A100 is compute 8.0: older than the 8.6 floor even though it has the memory.
        let probed = Ok(vec![gpu("NVIDIA A100-SXM4-80GB", (8, 0), 79, 80)]);
        let err = choose(&probed, &GpuNeeds::DEFAULT).unwrap_err();
        assert!(err.contains("compute capability 8.0 is below 8.6"), "{err}");
        assert!(!err.contains("GiB free is below"), "{err}");
    }

    #[test]
    fn a_busy_gpu_is_refused_for_memory() {
        let probed = Ok(vec![gpu("NVIDIA RTX 4090", (8, 9), 6, 24)]);
        let err = choose(&probed, &GpuNeeds::DEFAULT).unwrap_err();
        assert!(err.contains("6.0 GiB free is below the 20.0 GiB this stage needs"), "{err}");
        let relaxed = GpuNeeds { min_free_bytes: 4 << 30, ..GpuNeeds::DEFAULT };
        assert!(choose(&probed, &relaxed).is_ok());
    }

    #[test]
    fn only_device_zero_counts() {
        // A runner owns one GPU; a second, better device in view is not silently used instead.
        let mut second = gpu("NVIDIA H100", (9, 0), 79, 80);
        second.ordinal = 1;
        let probed = Ok(vec![gpu("Tesla T4", (7, 5), 14, 15), second]);
        assert!(choose(&probed, &GpuNeeds::DEFAULT).unwrap_err().contains("Tesla T4"));
    }

    #[test]
    fn no_driver_and_no_device_say_which() {
        let no_driver: Result<Vec<GpuInfo>, String> = Err("the NVIDIA driver library (libcuda.so.1) is not installed".into());
        let err = choose(&no_driver, &GpuNeeds::DEFAULT).unwrap_err();
        assert!(err.starts_with("no usable GPU on this node: the NVIDIA driver library"), "{err}");
        let none = Ok(vec![]);
        assert!(choose(&none, &GpuNeeds::DEFAULT).unwrap_err().contains("shows no CUDA device"));
    }

    #[test]
    fn the_free_memory_floor_comes_from_the_stage_profile() {
        assert_eq!(GpuNeeds::with_min_free_gib(Some(40.0)).min_free_bytes, 40 << 30);
        assert_eq!(GpuNeeds::with_min_free_gib(None), GpuNeeds::DEFAULT);
    }

    #[test]
    fn nvml_uuids_are_formatted_as_the_driver_prints_them() {
        let bytes: [std::os::raw::c_char; 16] = std::array::from_fn(|i| (i as u8 * 17) as std::os::raw::c_char);
        assert_eq!(nvml_uuid(&bytes), "GPU-00112233-4455-6677-8899-aabbccddeeff");
    }
}
