//! Process metadata and memory maps from procfs: comm, exe, build id, cmdline, cgroup ->
//! container id / systemd unit, the `service` label, and `/proc/PID/maps`.
//!
//! [`ProcessTable`] snapshots a process the moment the sampler first sees it (the BPF program
//! announces new thread groups on a ring buffer), so short-lived processes keep their metadata
//! and maps after they exit. Maps are re-read lazily when an address falls outside every known
//! mapping (the process exec'd or mapped a library since). A process is read again whole when
//! its tgid no longer holds the process captured (its start time or comm changed: an `exec`,
//! or a reused tgid): at a drain if it was captured lately, else at its interval's end.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::profile::Process;

/// One executable or file-backed region of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// Path or pseudo-name (`[vdso]`, `[heap]`); `None` for anonymous memory.
    pub path: Option<String>,
}

impl Mapping {
    /// File offset of `addr`, which must lie in this mapping.
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// Parses `/proc/PID/maps`, keeping only executable regions (the only ones stacks point into).
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(offset)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !perms.contains('x') {
            continue;
        }
        let (_dev, _inode) = (fields.next(), fields.next());
        let path: Vec<&str> = fields.collect();
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(offset)) = (
            u64::from_str_radix(start, 16),
            u64::from_str_radix(end, 16),
            u64::from_str_radix(offset, 16),
        ) else {
            continue;
        };
        let path = (!path.is_empty()).then(|| path.join(" "));
        out.push(Mapping {
            start,
            end,
            offset,
            path,
        });
    }
    out
}

/// Which process attribute a [`ServiceRule`] matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceField {
    /// Systemd unit, e.g. `nginx.service`.
    Unit,
    /// Executable path.
    Exe,
    /// `comm`.
    Comm,
    /// Cgroup path.
    Cgroup,
    /// Container id.
    Container,
}

/// A configured mapping to a service label: `FIELD:PATTERN=SERVICE`, where PATTERN is exact
/// or ends with `*` for a prefix match. Example: `exe:/usr/bin/gzip=compression`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRule {
    /// Attribute matched.
    pub field: ServiceField,
    /// Exact value, or prefix followed by `*`.
    pub pattern: String,
    /// Service label assigned on a match.
    pub service: String,
}

impl std::str::FromStr for ServiceRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "expected FIELD:PATTERN=SERVICE with FIELD one of unit, exe, comm, cgroup, \
                     container (e.g. exe:/usr/bin/gzip=compression)";
        let (lhs, service) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?}: {usage}"))?;
        let (field, pattern) = lhs
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: {usage}"))?;
        let field = match field {
            "unit" => ServiceField::Unit,
            "exe" => ServiceField::Exe,
            "comm" => ServiceField::Comm,
            "cgroup" => ServiceField::Cgroup,
            "container" => ServiceField::Container,
            other => return Err(format!("unknown field {other:?} in {s:?}: {usage}")),
        };
        if pattern.is_empty() || service.is_empty() {
            return Err(format!("{s:?}: {usage}"));
        }
        Ok(Self {
            field,
            pattern: pattern.to_owned(),
            service: service.to_owned(),
        })
    }
}

impl ServiceRule {
    fn matches(&self, p: &Process) -> bool {
        let value = match self.field {
            ServiceField::Unit => p.systemd_unit.as_deref(),
            ServiceField::Exe => p.exe.as_deref(),
            ServiceField::Comm => Some(p.comm.as_str()),
            ServiceField::Cgroup => p.cgroup.as_deref(),
            ServiceField::Container => p.container_id.as_deref(),
        };
        let Some(value) = value else { return false };
        match self.pattern.strip_suffix('*') {
            Some(prefix) => value.starts_with(prefix),
            None => value == self.pattern,
        }
    }
}

/// The service label: first matching rule, else the systemd service, else the executable's
/// file name (unless it is a memfd), else `comm`. Kernel threads are `[kernel]`, the idle task `[idle]`.
pub fn service_label(p: &Process, rules: &[ServiceRule]) -> String {
    if let Some(rule) = rules.iter().find(|r| r.matches(p)) {
        return rule.service.clone();
    }
    if p.tgid == 0 {
        return "[idle]".to_owned();
    }
    if p.kernel_thread {
        return "[kernel]".to_owned();
    }
    if let Some(unit) = p.systemd_unit.as_deref()
        && let Some(name) = unit.strip_suffix(".service")
    {
        return name.to_owned();
    }
    if let Some(exe) = &p.exe {
        let name = exe.rsplit('/').next().unwrap_or(exe);
        // A program run from a memfd (fexecve, sealed self-copies) has a random file name
        // per run; its comm is the stable name it goes by.
        if !name.starts_with("memfd:") {
            return name.to_owned();
        }
    }
    p.comm.clone()
}

/// Picks the most telling cgroup path from `/proc/PID/cgroup` (v2 line, else systemd's v1
/// hierarchy, else any non-root v1 path) and extracts a container id and systemd unit.
pub fn parse_cgroup(text: &str) -> (Option<String>, Option<String>, Option<String>) {
    let mut v2 = None;
    let mut systemd = None;
    let mut other = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if path == "/" {
            continue;
        }
        match controllers {
            "" => v2 = Some(path),
            "name=systemd" => systemd = Some(path),
            _ => other = other.or(Some(path)),
        }
    }
    let path = v2.or(systemd).or(other).map(str::to_owned);
    let container = text
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|t| t.len() == 64)
        .map(str::to_owned);
    let unit = path.as_deref().and_then(|p| {
        p.rsplit('/')
            .find(|c| c.ends_with(".service"))
            .or_else(|| {
                p.rsplit('/').find(|c| {
                    c.ends_with(".scope") && !container.as_deref().is_some_and(|id| c.contains(id))
                })
            })
            .map(str::to_owned)
    });
    (path, container, unit)
}

/// Metadata and maps of one process, as captured.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Metadata.
    pub process: Process,
    /// Executable mappings.
    pub maps: Vec<Mapping>,
    /// Which process held the tgid when captured (`None` when it had already exited).
    pub identity: Option<Identity>,
}

/// What tells one process from another at the same tgid: its start time (a reused tgid
/// starts later) and its comm (an `exec` renames it to the new program).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Field 22 of `/proc/PID/stat`, clock ticks after boot.
    pub start_ticks: u64,
    /// Field 2 of `/proc/PID/stat`, without its parentheses.
    pub comm: String,
}

/// The identity of the process in a `/proc/PID/stat` line, unless it has exited (a zombie
/// runs no more code, so it counts as gone) or the line is not one.
pub fn running_identity(stat: &str) -> Option<Identity> {
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1;
    let mut fields = rest.split_ascii_whitespace();
    if matches!(fields.next(), None | Some("Z" | "X" | "x")) {
        return None;
    }
    // Fields 4..=21 precede the start time.
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some(Identity {
        start_ticks,
        comm: comm.to_owned(),
    })
}

/// The identity of the process running as `pid` under `proc_root`, if one is.
fn current_identity(proc_root: &Path, pid: u32) -> Option<Identity> {
    let stat = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    running_identity(&stat)
}

/// Reads a process from `proc_root` (normally `/proc`). `comm_hint` (from BPF) is used when
/// the process is already gone.
pub fn read_process(
    proc_root: &Path,
    tgid: u32,
    comm_hint: &str,
    rules: &[ServiceRule],
) -> Snapshot {
    let dir = proc_root.join(tgid.to_string());
    let mut p = Process {
        tgid,
        comm: comm_hint.to_owned(),
        ..Process::default()
    };
    if tgid == 0 {
        p.comm = "swapper".to_owned();
        p.kernel_thread = true;
        p.service = service_label(&p, rules);
        return Snapshot {
            process: p,
            ..Snapshot::default()
        };
    }
    let stat = fs::read_to_string(dir.join("stat"));
    let Ok(stat) = stat else {
        p.exited = true;
        p.service = service_label(&p, rules);
        return Snapshot {
            process: p,
            ..Snapshot::default()
        };
    };
    let identity = running_identity(&stat);
    // Field 9 (after the parenthesised comm) holds the task flags; PF_KTHREAD = 0x00200000.
    let flags = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_ascii_whitespace().nth(6))
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    p.kernel_thread = flags & 0x0020_0000 != 0;
    if let Ok(comm) = fs::read_to_string(dir.join("comm")) {
        p.comm = comm.trim_end_matches('\n').to_owned();
    }
    if let Ok(cmdline) = fs::read(dir.join("cmdline")) {
        p.cmdline = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
    }
    let exe_link = dir.join("exe");
    if let Ok(exe) = fs::read_link(&exe_link) {
        p.exe = Some(exe_path(&exe.to_string_lossy()).to_owned());
        // Through /proc/PID/exe the file is readable even if replaced or deleted on disk.
        p.build_id = build_id(&exe_link);
    }
    if let Ok(cgroup) = fs::read_to_string(dir.join("cgroup")) {
        (p.cgroup, p.container_id, p.systemd_unit) = parse_cgroup(&cgroup);
    }
    let maps = fs::read_to_string(dir.join("maps"))
        .map(|m| parse_maps(&m))
        .unwrap_or_default();
    p.service = service_label(&p, rules);
    Snapshot {
        process: p,
        maps,
        identity,
    }
}

/// The executable's path from the target of `/proc/PID/exe`, without the ` (deleted)` the
/// kernel appends once the file was removed or replaced on disk (as a deploy does): it is
/// still the same program, so its exe rules and service label must not change.
pub fn exe_path(link_target: &str) -> &str {
    link_target
        .strip_suffix(" (deleted)")
        .unwrap_or(link_target)
}

/// Whether `pid` exists and has not exited: a zombie (exited, not yet reaped by its parent)
/// runs no more code, so it counts as gone.
pub fn is_running(proc_root: &Path, pid: u32) -> bool {
    current_identity(proc_root, pid).is_some()
}

/// `root` and its living descendants (children of any of its threads, recursively, from
/// `/proc/PID/task/TID/children`), at most `limit`, root first; `except` (this agent, which a
/// test or script may have started from the followed process) and its children are left out.
/// A shell that waits for the program it started (`sh -c 'python3 app.py'`) is the usual
/// case: the pid a user has is the shell's, and all the work is its child's.
pub fn tree(proc_root: &Path, root: u32, except: u32, limit: usize) -> Vec<u32> {
    let mut out = vec![root];
    let mut next = 0;
    while next < out.len() && out.len() < limit {
        let task = proc_root.join(out[next].to_string()).join("task");
        next += 1;
        let Ok(threads) = fs::read_dir(&task) else {
            continue;
        };
        for thread in threads.flatten() {
            let Ok(children) = fs::read_to_string(thread.path().join("children")) else {
                continue;
            };
            for child in children
                .split_ascii_whitespace()
                .filter_map(|c| c.parse().ok())
            {
                if child != except && !out.contains(&child) && out.len() < limit {
                    out.push(child);
                }
            }
        }
    }
    out
}

/// GNU build id of an ELF file, lowercase hex.
pub fn build_id(path: &Path) -> Option<String> {
    let id = blazesym::helper::read_elf_build_id(path).ok()??;
    Some(hex(&id))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Processes seen so far, captured at first sight.
#[derive(Debug)]
pub struct ProcessTable {
    proc_root: PathBuf,
    rules: Vec<ServiceRule>,
    entries: HashMap<u32, Entry>,
}

#[derive(Debug)]
struct Entry {
    snapshot: Snapshot,
    /// Drain generation in which maps were last re-read (limits re-reads to one per drain).
    refreshed: u64,
    /// When it was captured.
    captured: Instant,
}

/// How long after capture [`ProcessTable::refresh_changed`] checks a process: a child caught
/// between its fork and its `exec` is young. Older ones are checked at each interval's end by
/// [`ProcessTable::forget_exited`], so a busy host's drains read few `/proc` files.
const YOUNG: Duration = Duration::from_secs(5);

impl ProcessTable {
    /// A table reading from `proc_root` and labelling with `rules`.
    pub fn new(proc_root: impl Into<PathBuf>, rules: Vec<ServiceRule>) -> Self {
        Self {
            proc_root: proc_root.into(),
            rules,
            entries: HashMap::new(),
        }
    }

    /// Snapshots `tgid` if it is new. Returns true when it was.
    pub fn observe(&mut self, tgid: u32, comm_hint: &str) -> bool {
        if self.entries.contains_key(&tgid) {
            return false;
        }
        let snapshot = read_process(&self.proc_root, tgid, comm_hint, &self.rules);
        tracing::debug!(tgid, comm = %snapshot.process.comm, maps = snapshot.maps.len(), "new process");
        self.entries.insert(
            tgid,
            Entry {
                snapshot,
                refreshed: 0,
                captured: Instant::now(),
            },
        );
        true
    }

    /// Forgets processes that have exited, so a long-running daemon's table stays the size of
    /// the live process set, and those whose tgid now holds another program (reused by a new
    /// process, or the process `exec`ed), so their samples are not labelled with the old one's
    /// service and binary. Returns the tgids dropped. (A forgotten tgid that samples again is
    /// snapshotted again on first sight.)
    pub fn forget_exited(&mut self) -> Vec<u32> {
        let root = self.proc_root.clone();
        let mut gone = Vec::new();
        self.entries.retain(|&tgid, e| {
            let same = tgid == 0
                || e.snapshot.identity.is_some()
                    && current_identity(&root, tgid) == e.snapshot.identity;
            if !same {
                gone.push(tgid);
            }
            same
        });
        gone
    }

    /// Reads `tgid` again if it was captured lately and the process running as it is no
    /// longer the one captured (it `exec`ed, or the tgid was reused); one that has exited
    /// keeps what was captured while it ran. Returns true when it was read again.
    pub fn refresh_changed(&mut self, tgid: u32) -> bool {
        let Some(captured) = self
            .entries
            .get(&tgid)
            .filter(|e| e.captured.elapsed() < YOUNG)
            .and_then(|e| e.snapshot.identity.as_ref())
        else {
            return false;
        };
        match current_identity(&self.proc_root, tgid) {
            Some(now) if now != *captured => {
                self.entries.remove(&tgid);
                self.observe(tgid, "")
            }
            _ => false,
        }
    }

    /// Metadata of `tgid`, if observed.
    pub fn get(&self, tgid: u32) -> Option<&Process> {
        self.entries.get(&tgid).map(|e| &e.snapshot.process)
    }

    /// The mapping holding `addr` in `tgid`. On a miss the maps are re-read once per
    /// `generation` (pass a drain counter), in case the process mapped more code since.
    pub fn mapping(&mut self, tgid: u32, addr: u64, generation: u64) -> Option<&Mapping> {
        let entry = self.entries.get_mut(&tgid)?;
        let hit = |maps: &[Mapping]| maps.iter().position(|m| m.start <= addr && addr < m.end);
        let mut found = hit(&entry.snapshot.maps);
        if found.is_none() && entry.refreshed < generation {
            entry.refreshed = generation;
            let path = self.proc_root.join(tgid.to_string()).join("maps");
            if let Ok(text) = fs::read_to_string(path) {
                entry.snapshot.maps = parse_maps(&text);
                found = hit(&entry.snapshot.maps);
            }
        }
        found.map(|i| &entry.snapshot.maps[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keep_executable_regions_with_paths() {
        let text = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 123 /usr/bin/gzip
55d0c0a02000-55d0c0a10000 r-xp 00002000 08:01 123 /usr/bin/gzip
7f0000000000-7f0000001000 rwxp 00000000 00:00 0
7ffd1000-7ffd3000 r-xp 00000000 00:00 0 [vdso]
7f1000000000-7f1000001000 r-xp 00001000 08:01 9 /tmp/my lib.so (deleted)
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].path.as_deref(), Some("/usr/bin/gzip"));
        assert_eq!(maps[0].file_offset(0x55d0c0a02010), 0x2010);
        assert_eq!(maps[1].path, None);
        assert_eq!(maps[2].path.as_deref(), Some("[vdso]"));
        assert_eq!(maps[3].path.as_deref(), Some("/tmp/my lib.so (deleted)"));
    }

    #[test]
    fn cgroups_yield_units_and_container_ids() {
        let (path, c, unit) = parse_cgroup("0::/system.slice/nginx.service\n");
        assert_eq!(path.as_deref(), Some("/system.slice/nginx.service"));
        assert_eq!(c, None);
        assert_eq!(unit.as_deref(), Some("nginx.service"));

        let id = "a".repeat(64);
        let (_, c, unit) = parse_cgroup(&format!("0::/system.slice/docker-{id}.scope\n"));
        assert_eq!(c.as_deref(), Some(id.as_str()));
        assert_eq!(unit, None, "a container scope is not a unit to label by");

        let (path, c, unit) = parse_cgroup("9:name=systemd:/\n4:memory:/x/59db\n0::/\n");
        assert_eq!(path.as_deref(), Some("/x/59db"));
        assert_eq!((c, unit), (None, None));
    }

    #[test]
    fn service_label_prefers_rules_then_unit_then_exe() {
        let mut p = Process {
            tgid: 10,
            comm: "gzip".into(),
            exe: Some("/usr/bin/gzip".into()),
            ..Process::default()
        };
        assert_eq!(service_label(&p, &[]), "gzip");
        p.systemd_unit = Some("backup.service".into());
        assert_eq!(service_label(&p, &[]), "backup");
        let rule: ServiceRule = "exe:/usr/bin/*=tools".parse().unwrap();
        assert_eq!(service_label(&p, &[rule]), "tools");
        assert!("bogus:x=y".parse::<ServiceRule>().is_err());
        assert!("exe:x".parse::<ServiceRule>().is_err());
    }

    /// A program executed from a memfd has exe `/memfd:sealed-<random>` (the ` (deleted)` is
    /// already stripped): a new service every run until its comm is used instead.
    #[test]
    fn a_memfd_executable_is_labelled_by_its_comm() {
        let p = Process {
            tgid: 10,
            comm: "runc".into(),
            exe: Some("/memfd:sealed-91173221a7ea".into()),
            ..Process::default()
        };
        assert_eq!(service_label(&p, &[]), "runc");
    }

    /// Regression: a process whose executable was replaced on disk (a deploy) was labelled
    /// `server (deleted)`, a different service from the `server` it had been.
    #[test]
    fn a_deleted_executable_keeps_its_name_and_service() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("42");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("stat"), "42 (server) S 1 42 42 0 -1 4194560 0 0").unwrap();
        fs::write(dir.join("comm"), "server\n").unwrap();
        std::os::unix::fs::symlink("/opt/app/server (deleted)", dir.join("exe")).unwrap();
        let snap = read_process(root.path(), 42, "", &[]);
        assert_eq!(snap.process.exe.as_deref(), Some("/opt/app/server"));
        assert_eq!(snap.process.service, "server");
        let rule: ServiceRule = "exe:/opt/app/server=api".parse().unwrap();
        assert_eq!(
            read_process(root.path(), 42, "", &[rule]).process.service,
            "api"
        );
        // A name that merely contains the marker elsewhere is left alone.
        assert_eq!(exe_path("/opt/a (deleted)/b"), "/opt/a (deleted)/b");
    }

    #[test]
    fn this_process_reads_back() {
        let me = std::process::id();
        let snap = read_process(Path::new("/proc"), me, "", &[]);
        assert!(!snap.process.exited);
        assert!(snap.process.exe.is_some());
        assert!(!snap.maps.is_empty());
        assert!(!snap.process.kernel_thread);
        assert!(is_running(Path::new("/proc"), me));
        assert!(!is_running(Path::new("/proc"), u32::MAX));
        let here = this_process_reads_back as *const () as u64;
        assert!(snap.maps.iter().any(|m| m.start <= here && here < m.end));
    }

    /// A `/proc/PID/stat` line of a running process named `comm`, started at `start` ticks.
    fn stat_line(pid: u32, comm: &str, start: u64) -> String {
        format!("{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 1 2 0 0 20 0 1 0 {start} 0 0")
    }

    #[test]
    fn identity_is_start_time_and_comm_of_a_running_process() {
        let id = running_identity(&stat_line(7, "a) b", 123)).unwrap();
        assert_eq!((id.start_ticks, id.comm.as_str()), (123, "a) b"));
        let zombie = stat_line(7, "gone", 123).replace(") S ", ") Z ");
        assert_eq!(running_identity(&zombie), None);
        assert_eq!(running_identity("7 (short) S 1"), None);
    }

    /// Regression: a tgid reused by a new process, or a process that `exec`ed another
    /// program, kept the first one's service and binary for as long as it ran.
    #[test]
    fn a_tgid_holding_another_program_is_forgotten_and_read_again() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("42");
        fs::create_dir(&dir).unwrap();
        let set = |comm: &str, start: u64| {
            fs::write(dir.join("stat"), stat_line(42, comm, start)).unwrap();
            fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        };
        let mut table = ProcessTable::new(root.path(), Vec::new());
        set("wrapper", 100);
        assert!(table.observe(42, ""));
        assert_eq!(
            table.forget_exited(),
            [] as [u32; 0],
            "the same process stays"
        );
        set("server", 100); // exec: same start, new program
        assert!(table.refresh_changed(42), "a drain reads it again");
        assert_eq!(table.get(42).unwrap().comm, "server");
        assert!(!table.refresh_changed(42));
        set("server", 900); // the tgid reused by a later process
        assert_eq!(table.forget_exited(), [42], "an interval's end forgets it");
        assert!(table.observe(42, ""));
        assert_eq!(table.get(42).unwrap().comm, "server");
        fs::remove_dir_all(&dir).unwrap();
        assert!(
            !table.refresh_changed(42),
            "an exited process keeps its capture"
        );
        assert_eq!(table.get(42).unwrap().comm, "server");
        assert_eq!(table.forget_exited(), [42], "an exited process goes");
    }

    /// The same on this kernel: a shell that `exec`s `sleep` is read again as `sleep`.
    #[test]
    fn a_real_exec_is_seen() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read _; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut table = ProcessTable::new("/proc", Vec::new());
        table.observe(pid, "");
        assert_eq!(table.get(pid).unwrap().comm, "sh");
        assert!(table.forget_exited().is_empty());
        drop(child.stdin.take()); // `read` returns at EOF, then the shell execs
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while current_identity(Path::new("/proc"), pid).is_some_and(|i| i.comm == "sh") {
            assert!(
                std::time::Instant::now() < deadline,
                "sh never exec'd sleep"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(table.forget_exited(), [pid]);
        table.observe(pid, "");
        assert_eq!(table.get(pid).unwrap().comm, "sleep");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
