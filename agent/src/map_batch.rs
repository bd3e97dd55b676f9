//! Batched read-and-clear of a BPF hash map with `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (Linux
//! 5.6): one system call per chunk of entries, where the per-entry path costs three (next
//! key, lookup, delete) and was the agent's largest CPU cost at 99 Hz. aya has no batch
//! operations, so this is the raw `bpf(2)` call; the caller keeps the per-entry path for
//! kernels that refuse it ([`BatchError::Unsupported`]).

use std::{
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsRawFd, BorrowedFd},
};

/// `enum bpf_cmd` value of `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (stable UAPI).
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
/// `ENOTSUPP`, the kernel-internal errno a map type without batch support returns.
const ENOTSUPP: i32 = 524;
/// Never grow a chunk past this many entries (a hash bucket never holds that many).
const MAX_CHUNK: usize = 1 << 16;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Why a batched drain stopped.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The kernel (before 5.6) or the map type has no batch lookup-and-delete; nothing was
    /// read or deleted.
    #[error("this kernel has no BPF_MAP_LOOKUP_AND_DELETE_BATCH for this map: {0}")]
    Unsupported(#[source] io::Error),
    /// The call failed part way; `taken` entries were delivered before it did.
    #[error("batched read of a BPF map failed after {taken} entries: {source}")]
    Failed {
        /// Entries handed to the callback before the failure.
        taken: u64,
        /// The system call's error.
        #[source]
        source: io::Error,
    },
}

/// Reads and deletes every entry of the hash map `fd`, `chunk` entries per call (grown when
/// one hash bucket holds more), and hands each to `each`. Returns the number of entries.
///
/// `K` and `V` must be the map's exact key and value layouts (the kernel checks neither).
pub fn take_all<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    chunk: usize,
    mut each: impl FnMut(&K, &V),
) -> Result<u64, BatchError> {
    let mut chunk = chunk.clamp(1, MAX_CHUNK);
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    // Hash maps take a 4-byte bucket cursor; 8 bytes is enough for every map type.
    let (mut cursor_in, mut cursor_out) = (0u64, 0u64);
    let mut started = false;
    let mut taken = 0u64;
    loop {
        keys.resize(chunk, MaybeUninit::uninit());
        values.resize(chunk, MaybeUninit::uninit());
        let mut attr = BatchAttr {
            in_batch: if started {
                (&raw const cursor_in) as u64
            } else {
                0
            },
            out_batch: (&raw mut cursor_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `chunk` keys and values of the map's sizes,
        // and at two 8-byte cursors; all outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_BATCH,
                &mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc != 0).then(io::Error::last_os_error);
        // The kernel reports how many it copied out (and deleted) even when it fails.
        let got = (attr.count as usize).min(chunk);
        for i in 0..got {
            // SAFETY: the kernel wrote the first `got` entries of both buffers.
            let (k, v) = unsafe { (keys[i].assume_init_ref(), values[i].assume_init_ref()) };
            each(k, v);
        }
        taken += got as u64;
        match err.as_ref().and_then(io::Error::raw_os_error) {
            None => {
                cursor_in = cursor_out;
                started = true;
            }
            Some(libc::ENOENT) => return Ok(taken),
            // One bucket holds more entries than a chunk: retry it with a larger one.
            Some(libc::ENOSPC) if got == 0 && chunk < MAX_CHUNK => chunk *= 2,
            Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP) if taken == 0 && !started => {
                return Err(BatchError::Unsupported(err.expect("an errno")));
            }
            Some(_) => {
                return Err(BatchError::Failed {
                    taken,
                    source: err.expect("an errno"),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    use super::*;

    /// `BPF_MAP_CREATE` of a plain hash map with u64 keys and `[u64; 4]` values.
    fn hash_map(entries: u32) -> OwnedFd {
        #[repr(C)]
        #[derive(Default)]
        struct Create {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        let mut attr = Create {
            map_type: 1, // BPF_MAP_TYPE_HASH
            key_size: 8,
            value_size: 32,
            max_entries: entries,
            ..Create::default()
        };
        // SAFETY: a valid attribute struct of the size passed.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, &mut attr, size_of::<Create>()) };
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: the kernel just returned this descriptor to us.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    fn put(fd: &OwnedFd, key: u64, value: [u64; 4]) {
        #[repr(C)]
        struct Update {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        let mut attr = Update {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: (&raw const key) as u64,
            value: (&raw const value) as u64,
            flags: 0,
        };
        // SAFETY: key and value outlive the call and have the map's sizes.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, 2, &mut attr, size_of::<Update>()) };
        assert_eq!(rc, 0, "BPF_MAP_UPDATE_ELEM: {}", io::Error::last_os_error());
    }

    #[test]
    fn every_entry_is_read_once_and_the_map_is_left_empty() {
        let fd = hash_map(8192);
        for k in 1..=5000u64 {
            put(&fd, k, [k, k * 2, k * 3, !k]);
        }
        // A chunk of 1 must grow wherever a bucket holds two entries.
        for chunk in [1, 64, 4096] {
            let mut seen = std::collections::BTreeMap::new();
            let n = take_all::<u64, [u64; 4]>(fd.as_fd(), chunk, |k, v| {
                assert_eq!(*v, [*k, k * 2, k * 3, !k], "value of key {k}");
                assert!(seen.insert(*k, ()).is_none(), "key {k} read twice");
            })
            .expect("batched drain");
            if chunk == 1 {
                assert_eq!(n, 5000);
                assert_eq!(seen.len(), 5000);
                assert_eq!(seen.keys().next_back(), Some(&5000));
                for k in 1..=300u64 {
                    put(&fd, k, [k, k * 2, k * 3, !k]);
                }
            } else if chunk == 64 {
                assert_eq!(n, 300, "only what was put back");
            } else {
                assert_eq!(n, 0, "the map was left empty");
            }
        }
    }
}
