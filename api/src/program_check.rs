//! Checking an uploaded program before anything is stored. SP1's loader builds the program's
//! memory image word by word over every loadable segment's memory size, so a few header bytes
//! that claim gigabytes would make the api allocate them; the segment sizes are therefore read
//! first, with the `elf` crate, and bounded. The loader then runs on the blocking pool under a
//! panic guard: a crafted ELF gets INVALID_ARGUMENT, never a crashed or stalled api.

use elf::{abi::PT_LOAD, endian::AnyEndian, ElfBytes};
use tonic::Status;

/// The memory a program's loadable segments may claim, all together, by default.
pub const DEFAULT_MAX_PROGRAM_MEMORY: u64 = 256 << 20;

/// Refuses an ELF whose loadable segments claim more than `max_memory` bytes of memory.
pub fn check_segments(program: &[u8], max_memory: u64) -> Result<(), String> {
    let elf = ElfBytes::<AnyEndian>::minimal_parse(program).map_err(|e| format!("not an ELF file: {e}"))?;
    let segments = elf.segments().ok_or("the ELF has no program headers")?;
    let mut claimed: u64 = 0;
    for segment in segments.iter().filter(|s| s.p_type == PT_LOAD) {
        claimed = claimed.saturating_add(segment.p_memsz);
        if claimed > max_memory {
            return Err(format!(
                "its loadable segments claim more than {max_memory} bytes of memory (this segment alone {} at {:#x}); \
                 the server's limit is --max-program-memory-bytes",
                segment.p_memsz, segment.p_vaddr
            ));
        }
    }
    Ok(())
}

/// Whether `program` is an ELF SP1 can run, checked as described above; hands the bytes back.
pub async fn validate_program(program: Vec<u8>, max_memory: u64) -> Result<Vec<u8>, Status> {
    if program.is_empty() {
        return Err(Status::invalid_argument("program is empty"));
    }
    let invalid = |why: String| Status::invalid_argument(format!("program is not a valid SP1 RISC-V ELF: {why}"));
    check_segments(&program, max_memory).map_err(invalid)?;
    let checked = tokio::task::spawn_blocking(move || {
        let loaded = std::panic::catch_unwind(|| sp1_core_executor::Program::from(&program).map(drop));
        (program, loaded)
    })
    .await
    .map_err(|e| Status::internal(format!("program check did not finish: {e}")))?;
    match checked {
        (program, Ok(Ok(()))) => Ok(program),
        (_, Ok(Err(e))) => Err(invalid(e.to_string())),
        (_, Err(_)) => Err(invalid("SP1's loader rejected it (it panicked on this input)".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal 64-bit little-endian RISC-V ELF with one PT_LOAD segment of `memsz` bytes.
    fn elf_claiming(memsz: u64) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little-endian
        elf[6] = 1; // version
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&243u16.to_le_bytes()); // EM_RISCV
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // entry
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = &mut elf[64..];
        ph[..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        ph[16..24].copy_from_slice(&0x20_0000u64.to_le_bytes()); // vaddr
        ph[40..48].copy_from_slice(&memsz.to_le_bytes()); // memsz (filesz 0)
        elf
    }

    #[test]
    fn segments_claiming_too_much_memory_are_refused_before_loading() {
        assert!(check_segments(&elf_claiming(4096), 1 << 20).is_ok());
        let refused = check_segments(&elf_claiming(1 << 40), DEFAULT_MAX_PROGRAM_MEMORY).unwrap_err();
        assert!(refused.contains("claim more than"), "{refused}");
        assert!(check_segments(b"not an elf at all", 1 << 20).unwrap_err().contains("not an ELF"));
    }

    #[tokio::test]
    async fn the_loaders_verdict_comes_back_as_invalid_argument() {
        // Within the memory bound but not a program SP1 can run (no instructions).
        let status = validate_program(elf_claiming(4096), DEFAULT_MAX_PROGRAM_MEMORY).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        let status = validate_program(elf_claiming(1 << 40), DEFAULT_MAX_PROGRAM_MEMORY).await.unwrap_err();
        assert!(status.message().contains("claim more than"), "{status}");
    }
}
