//! Memory shared with every child forked afterwards: the scoreboard, and flags.

use crate::runtime::scoreboard::{Header, Slot};
use nix::errno::Errno;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicBool;

/// Maps the scoreboard: a header and `slots` records, shared with every child
/// forked afterwards, in `file` (already sized) or in anonymous memory. Never
/// unmapped, hence `'static`.
pub(crate) fn map_board(
    slots: usize,
    file: Option<&std::fs::File>,
) -> nix::Result<(&'static Header, &'static [Slot])> {
    use nix::sys::mman::{MapFlags, ProtFlags};
    let bytes = std::mem::size_of::<Header>() + slots * std::mem::size_of::<Slot>();
    let len = NonZeroUsize::new(bytes).ok_or(Errno::EINVAL)?;
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    let ptr: NonNull<u8> = match file {
        // SAFETY: a new mapping at an address the kernel chooses aliases no Rust
        // object; the caller sized the file to `len`.
        Some(f) => {
            unsafe { nix::sys::mman::mmap(None, len, prot, MapFlags::MAP_SHARED, f.as_fd(), 0)? }
                .cast()
        }
        // SAFETY: as above; anonymous memory is zero-filled.
        None => {
            unsafe { nix::sys::mman::mmap_anonymous(None, len, prot, MapFlags::MAP_SHARED)? }.cast()
        }
    };
    // SAFETY: the mapping is `len` bytes, page-aligned (so aligned for the 64-byte
    // records), zero-filled or sized from zero by ftruncate, and never unmapped.
    // Header and Slot hold only atomics, for which all-zero bytes are valid and
    // shared access from several processes is sound.
    unsafe {
        let header = &*ptr.as_ptr().cast::<Header>();
        let first = ptr
            .as_ptr()
            .add(std::mem::size_of::<Header>())
            .cast::<Slot>();
        Ok((header, std::slice::from_raw_parts(first, slots)))
    }
}

/// A flag in anonymous shared memory: the parent creates it before forking, and
/// it stays shared with every child forked afterwards. Never unmapped, hence
/// `'static`. If no memory can be mapped, a flag of this process alone.
pub(crate) fn shared_flag() -> &'static AtomicBool {
    use nix::sys::mman::{MapFlags, ProtFlags};
    let len = NonZeroUsize::new(std::mem::size_of::<AtomicBool>()).unwrap_or(NonZeroUsize::MIN);
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: a new anonymous mapping at an address the kernel chooses aliases no
    // Rust object.
    match unsafe { nix::sys::mman::mmap_anonymous(None, len, prot, MapFlags::MAP_SHARED) } {
        // SAFETY: the mapping is page-aligned, zero-filled (a valid `false`) and never
        // unmapped; an atomic is sound to share between processes.
        Ok(ptr) => unsafe { &*ptr.as_ptr().cast::<AtomicBool>() },
        Err(_) => Box::leak(Box::new(AtomicBool::new(false))),
    }
}
