//! An in-memory redb storage backend that can "lose power": writes reach the durable image only
//! through `sync_data`, and a crash throws away everything after the last sync (optionally after
//! letting the first `k` backend calls of a commit through, to kill it at any point). The
//! simulator and the crash tests run the real store on it.

use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

/// redb's backend error type on std builds.
type BackendIoError = std::io::Error;

#[derive(Debug, Default)]
struct Image {
    /// What the running process sees (page cache).
    current: Vec<u8>,
    /// What survives a crash (the disk).
    durable: Vec<u8>,
    /// Writes since the last sync that reached the "disk" anyway, in order, before a kill.
    unsynced: Vec<(u64, Vec<u8>)>,
    /// Remaining backend calls (write/sync/set_len) before the process counts as killed.
    calls_left: Option<usize>,
    killed: bool,
}

/// Cloning shares the image, so a "restarted" database opens what the "crashed" one left.
#[derive(Debug, Clone, Default)]
pub struct CrashBackend {
    image: Arc<Mutex<Image>>,
}

fn io_err(msg: &str) -> BackendIoError {
    std::io::Error::other(msg.to_string())
}

impl CrashBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Image>, BackendIoError> {
        self.image
            .lock()
            .map_err(|_| io_err("crash backend lock poisoned"))
    }

    /// After `calls` more write/sync/set_len calls the process is "killed": later calls change
    /// nothing durable.
    pub fn kill_after(&self, calls: usize) {
        if let Ok(mut img) = self.image.lock() {
            img.calls_left = Some(calls);
        }
    }

    /// Power loss: the process image becomes what was durable (plus unsynced writes that made
    /// it out before the kill). Drop every `Database` on this backend before calling.
    pub fn crash(&self) {
        if let Ok(mut img) = self.image.lock() {
            let mut disk = std::mem::take(&mut img.durable);
            let unsynced = std::mem::take(&mut img.unsynced);
            for (off, data) in unsynced {
                write_at(&mut disk, off, &data);
            }
            img.durable = disk.clone();
            img.current = disk;
            img.calls_left = None;
            img.killed = false;
        }
    }

    /// Size of the durable image, for tests.
    pub fn durable_len(&self) -> usize {
        self.image.lock().map(|i| i.durable.len()).unwrap_or(0)
    }
}

fn write_at(buf: &mut Vec<u8>, off: u64, data: &[u8]) {
    let off = off as usize;
    if buf.len() < off + data.len() {
        buf.resize(off + data.len(), 0);
    }
    buf[off..off + data.len()].copy_from_slice(data);
}

impl Image {
    /// Counts one mutating call; false once the process is dead.
    fn alive(&mut self) -> bool {
        if self.killed {
            return false;
        }
        match self.calls_left.as_mut() {
            Some(0) => {
                self.killed = true;
                false
            }
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        }
    }
}

impl StorageBackend for CrashBackend {
    fn len(&self) -> Result<u64, BackendIoError> {
        Ok(self.lock()?.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        let img = self.lock()?;
        let start = usize::try_from(offset).map_err(|_| io_err("offset out of range"))?;
        let end = start
            .checked_add(out.len())
            .filter(|e| *e <= img.current.len())
            .ok_or_else(|| io_err("read past end"))?;
        out.copy_from_slice(&img.current[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        let mut img = self.lock()?;
        let alive = img.alive();
        img.current.resize(len as usize, 0);
        if alive && (len as usize) < img.durable.len() {
            // Truncation is metadata, treat it as durable at once (like ftruncate + fsync).
            img.durable.truncate(len as usize);
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        let mut img = self.lock()?;
        if img.alive() {
            let mut disk = std::mem::take(&mut img.durable);
            let unsynced = std::mem::take(&mut img.unsynced);
            for (off, data) in unsynced {
                write_at(&mut disk, off, &data);
            }
            // Everything the process wrote is now on disk, including zero-extension.
            if disk.len() < img.current.len() {
                disk.resize(img.current.len(), 0);
            }
            img.durable = disk;
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        let mut img = self.lock()?;
        let alive = img.alive();
        write_at(&mut img.current, offset, data);
        if alive {
            img.unsynced.push((offset, data.to_vec()));
        }
        Ok(())
    }
}
