//! Lifecycle tests: a start the daemon refuses leaves the system as it found it (no XDP program
//! attached, no pin left), a store emptied on disk is refused without touching the kernel's
//! routes, and `sluice verify` finds what differs between the lookup tables and the routes, which
//! a restart with nothing to change repairs.
//!
//! Namespace tier: needs root and bpffs (see `netns.rs`); each test has its own topology, pin
//! directory and state directory, removed on drop, also on panic.

#[allow(dead_code, reason = "shared by the namespace test crates, which use different parts")]
mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{SLUICE, Topology, privileged, wait_until};
use sluice_testbed::{
    lab::Subnet,
    netns::{self, NetNs},
};

/// How long a refused start may take to exit (it checks before it loads anything).
const REFUSED_WITHIN: Duration = Duration::from_secs(20);

/// A refused start: how it ended and what it said.
#[derive(Debug)]
struct Refused {
    code: Option<i32>,
    stderr: String,
    took: Duration,
}

/// Starts `sluice --pin-dir PIN daemon ARGS` in the router namespace and waits for it to exit;
/// panics when it is still running after [`REFUSED_WITHIN`] (it was not refused).
fn start_refused(t: &Topology, args: &[&str]) -> Refused {
    let started = Instant::now();
    let mut child = t
        .router
        .command(SLUICE)
        .arg("--pin-dir")
        .arg(&t.pin_dir)
        .arg("daemon")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice daemon");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the daemon") {
            break status;
        }
        if started.elapsed() > REFUSED_WITHIN {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sluice daemon {} was not refused: still running", args.join(" "));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    Refused { code: status.code(), stderr, took: started.elapsed() }
}

/// Whether an XDP program is attached to `dev` in `ns`.
fn xdp_on(ns: &NetNs, dev: &str) -> bool {
    ns.ip(&["-d", "link", "show", "dev", dev])
        .unwrap_or_else(|e| panic!("ip link show {dev}: {e:#}"))
        .contains("prog/xdp")
}

/// Every file and directory under `dir` (nothing when it does not exist).
fn pins(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(e.path());
            }
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// A scratch directory removed on drop (a read-only mount in it is unmounted first).
struct Scratch {
    path: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Scratch {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(netns::unique_name(&format!("sluice-{test}-")));
        fs::create_dir_all(&path).expect("scratch directory");
        Self { path, mounts: Vec::new() }
    }

    /// A directory nobody may write in, root included: a read-only tmpfs.
    fn read_only_dir(&mut self, name: &str) -> PathBuf {
        let dir = self.path.join(name);
        fs::create_dir_all(&dir).expect("mount point");
        netns::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "ro,size=64k,mode=0700", "tmpfs"])
                .arg(&dir),
        )
        .expect("mount a read-only tmpfs");
        self.mounts.push(dir.clone());
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[test]
fn a_refused_start_leaves_no_program_attached_and_no_pin() {
    if !privileged() {
        return;
    }
    let t = Topology::new(&[("c1", 1)]);
    let mut scratch = Scratch::new("refused");
    let file = scratch.path.join("a-file");
    fs::write(&file, "not a directory").unwrap();
    let read_only = scratch.read_only_dir("ro");
    let state_in_ro = read_only.join("state");
    let (file_s, ro_s, in_ro_s) =
        (file.to_str().unwrap(), read_only.to_str().unwrap(), state_in_ro.to_str().unwrap());
    // (arguments, what the message must name)
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--attach", "r-c1,nope0"], "nope0"),
        (vec!["--attach", "nope0,r-c1"], "nope0"),
        (vec!["--attach", "r-c1", "--state-dir", file_s], "not a directory"),
        (vec!["--attach", "r-c1", "--state-dir", ro_s], "not writable"),
        (vec!["--attach", "r-c1", "--state-dir", in_ro_s], "unusable"),
        // Refused by the kernel, after r-c1 was attached: the loopback has no native XDP.
        (vec!["--attach", "r-c1,lo", "--xdp-mode", "native"], "lo"),
    ];
    let mut attached_after = 0;
    let mut pins_left = 0;
    for (args, names) in &cases {
        let r = start_refused(&t, args);
        let attached = ["r-c1", "lo"].iter().filter(|d| xdp_on(&t.router, d)).count();
        let left = pins(&t.pin_dir);
        println!(
            "refused start {:?}: exit {:?} in {:?}; XDP attached after: {attached}; pins left: {}; \
             said: {}",
            args,
            r.code,
            r.took,
            left.len(),
            r.stderr.trim()
        );
        assert_ne!(r.code, Some(0), "{args:?} must be refused: {r:?}");
        assert!(r.stderr.contains(names), "{args:?}: the message names {names:?}: {r:?}");
        assert!(r.stderr.contains("error"), "{args:?}: {r:?}");
        attached_after += attached;
        pins_left += left.len();
        assert_eq!(attached, 0, "{args:?}: no XDP program may stay attached");
        assert!(left.is_empty(), "{args:?}: no pin may stay: {left:?}");
    }
    println!(
        "figure: {} refused starts; programs attached after them: {attached_after}; pins left: \
         {pins_left}",
        cases.len()
    );
}

#[test]
fn a_refused_restart_leaves_the_running_dataplane_as_it_was() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    t.start_daemon();
    t.wait_ping("c1", &Subnet(3).host_v4());
    // Killed: the pinned dataplane keeps forwarding without it.
    t.kill_daemon();
    let before = pins(&t.pin_dir);
    assert!(!before.is_empty(), "the dataplane is pinned");
    let r = start_refused(&t, &["--attach", "r-c1,r-srv,lo", "--xdp-mode", "native"]);
    let after = pins(&t.pin_dir);
    println!(
        "refused restart: exit {:?} in {:?}; pins before {}, after {}; said: {}",
        r.code,
        r.took,
        before.len(),
        after.len(),
        r.stderr.trim()
    );
    assert_ne!(r.code, Some(0), "{r:?}");
    assert_eq!(after, before, "the pins are those found");
    assert!(xdp_on(&t.router, "r-c1") && xdp_on(&t.router, "r-srv"), "still attached");
    assert!(!xdp_on(&t.router, "lo"), "nothing attached to lo");
    let p = common::ping(t.ns("c1"), &Subnet(3).host_v4(), 10, "0.01");
    assert_eq!(p.received, 10, "forwarding goes on: {p:?}");
    // And a start that is not refused adopts it all.
    t.start_daemon();
}

/// The kernel's Sluice routes (protocol 238) in the router, IPv4 and IPv6.
fn sluice_routes(ns: &NetNs) -> Vec<String> {
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        let text = ns.ip(&[family, "route", "show", "proto", "238"]).expect("ip route show");
        out.extend(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned));
    }
    out.sort();
    out
}

/// `sluice ARGS` (no pin directory needed): exit code and output.
fn sluice_cli(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(SLUICE).args(args).output().expect("run sluice");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

#[test]
fn a_store_emptied_on_disk_is_refused_and_no_kernel_route_is_removed() {
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1)]);
    let scratch = Scratch::new("store");
    let state = scratch.path.join("state");
    let state_s = state.to_str().unwrap().to_owned();
    let gw4 = Subnet(1).host_v4();
    let gw6 = Subnet(1).host_v6();
    let config = format!(
        r#"{{"routes": [{{"prefix": "10.77.0.0/16", "via": "{gw4}"}},
                       {{"prefix": "fd00:77::/48", "via": "{gw6}"}}]}}"#
    );
    let backup = scratch.path.join("backup.json");
    fs::write(&backup, &config).unwrap();
    let backup_s = backup.to_str().unwrap().to_owned();
    let (code, out) = sluice_cli(&["config", "--state-dir", &state_s, "import", &backup_s]);
    assert_eq!(code, Some(0), "import: {out}");
    let (code, out) = sluice_cli(&["config", "--state-dir", &state_s, "verify"]);
    assert_eq!(code, Some(0), "a store just written verifies: {out}");

    t.start_daemon_with(&["--state-dir", &state_s]);
    let applied = wait_until("the static routes in the kernel", Duration::from_secs(10), || {
        let r = sluice_routes(&t.router);
        (r.len() == 2).then_some(r)
    });
    t.kill_daemon();

    // Two ways to lose a store on disk: the database removed (with its snapshots), and its files
    // truncated to nothing.
    let db = state.join("db");
    let damage: [(&str, &dyn Fn()); 2] = [
        ("removed", &|| fs::remove_dir_all(&db).expect("remove the database")),
        ("truncated", &|| {
            for e in fs::read_dir(&db).expect("the database").flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    fs::File::create(e.path()).expect("truncate");
                }
            }
            let _ = fs::remove_dir_all(db.join("snap.tmp"));
            for e in fs::read_dir(&db).expect("the database").flatten() {
                if e.file_name().to_string_lossy().starts_with("snap") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }),
    ];
    let mut removed_total = 0;
    for (how, damage) in damage {
        damage();
        let pins_before = pins(&t.pin_dir);
        let r = start_refused(&t, &["--attach", "r-c1", "--state-dir", &state_s]);
        let now = sluice_routes(&t.router);
        let removed = applied.iter().filter(|r| !now.contains(r)).count();
        removed_total += removed;
        println!(
            "store {how}: start exit {:?} in {:?}; kernel routes removed: {removed} of {}; said: {}",
            r.code,
            r.took,
            applied.len(),
            r.stderr.trim()
        );
        assert_ne!(r.code, Some(0), "a store {how} on disk must be refused: {r:?}");
        assert!(r.stderr.contains("store"), "the message names the store: {r:?}");
        assert_eq!(now, applied, "the kernel's static routes are left alone");
        assert_eq!(pins(&t.pin_dir), pins_before, "nothing pinned or unpinned");
        let (code, out) = sluice_cli(&["config", "--state-dir", &state_s, "verify"]);
        assert_eq!(code, Some(1), "verify says the store is refused: {out}");
        println!("config verify: {}", out.trim());
        // Every other use of the store is refused the same way.
        let (code, out) = sluice_cli(&["config", "--state-dir", &state_s, "export"]);
        assert_eq!(code, Some(1), "{out}");
        // The way back: the backup restored.
        let (code, out) =
            sluice_cli(&["config", "--state-dir", &state_s, "repair", "--from", &backup_s]);
        assert_eq!(code, Some(0), "repair: {out}");
        println!("config repair: {}", out.trim());
        let (code, out) = sluice_cli(&["config", "--state-dir", &state_s, "verify"]);
        assert_eq!(code, Some(0), "repaired: {out}");
    }
    println!("figure: kernel routes removed by starts on an emptied store: {removed_total}");
    assert_eq!(removed_total, 0);

    // Accepting an empty store is said explicitly; then its start removes the routes, as the
    // operator asked.
    fs::remove_dir_all(&db).unwrap();
    let (code, _) = sluice_cli(&["config", "--state-dir", &state_s, "verify"]);
    assert_eq!(code, Some(1));
    let (code, out) = sluice_cli(&["config", "--state-dir", &state_s, "repair", "--accept"]);
    assert_eq!(code, Some(0), "{out}");
    t.start_daemon_with(&["--state-dir", &state_s]);
    // No revision of the accepted store has the routes: they are left, and the log says so.
    wait_until("the daemon to reconcile the static routes", Duration::from_secs(20), || {
        t.log_tail(400).contains("no revision of the store has").then_some(())
    });
    assert_eq!(sluice_routes(&t.router), applied, "routes no revision holds are not removed");
}

/// The IPv4 lookup tables of a pinned dataplane, mapped for writing (to damage them).
fn tbl24(pin: &Path) -> sluice_dataplane::shared_mem::MappedArray {
    let path = pin.join("maps").join(sluice_common::names::TBL24_V4);
    let map = aya::maps::MapData::from_pin(&path).expect("open the pinned first level");
    sluice_dataplane::shared_mem::MappedArray::map(
        map.fd(),
        sluice_common::dir24::TBL24_MAP_WORDS as usize,
    )
    .expect("map the first level")
}

#[test]
fn verify_finds_a_damaged_lookup_table_and_a_restart_repairs_it() {
    use sluice_core::dir24::Cells as _;
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    t.start_daemon();
    let gw = Subnet(3).host_v4();
    let other = Subnet(1).host_v4();
    for (prefix, via, what) in [
        ("10.66.0.0/16", &gw, "a /16"),
        ("10.66.5.128/25", &gw, "a /25 (a group)"),
        ("10.67.9.128/25", &other, "another group, through another gateway"),
    ] {
        common::ip(&t.router, &["route", "add", prefix, "via", via]);
        t.wait_route(prefix, what, |r| r.is_some());
    }
    common::ip(&t.router, &["-6", "route", "add", "fd00:66::/48", "via", &Subnet(3).host_v6()]);
    t.wait_route("fd00:66::/48", "present", |r| r.is_some());

    let started = Instant::now();
    let clean = t.sluice(&["verify"]);
    println!("sluice verify (clean, {:?}):\n{clean}", started.elapsed());
    assert!(clean.contains("ok: the lookup tables answer as the routes say"), "{clean}");
    assert!(clean.contains("0 differences, 0 problems"), "{clean}");

    // Damage: 10.66.0.0/24 and 10.66.1.0/24 (one word) answer nothing; 10.67.9.0/24 points to
    // the group of 10.66.5.0/24 (two writers).
    let cells = tbl24(&t.pin_dir);
    let slot =
        |a: [u8; 3]| (usize::from(a[0]) << 16) | (usize::from(a[1]) << 8) | usize::from(a[2]);
    let word = |slot: usize| slot / 2;
    let half =
        |value: u32, slot: usize| if slot.is_multiple_of(2) { value & 0xffff } else { value >> 16 };
    let (s0, s5, s9) = (slot([10, 66, 0]), slot([10, 66, 5]), slot([10, 67, 9]));
    cells.set(word(s0), 0);
    let group_of_5 = half(cells.get(word(s5)), s5);
    let w9 = cells.get(word(s9));
    let w9 = if s9.is_multiple_of(2) {
        (w9 & 0xffff_0000) | group_of_5
    } else {
        (w9 & 0xffff) | (group_of_5 << 16)
    };
    cells.set(word(s9), w9);
    drop(cells);

    let out =
        Command::new(SLUICE).arg("--pin-dir").arg(&t.pin_dir).args(["verify"]).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("sluice verify (damaged): exit {:?}\n{text}", out.status.code());
    assert_eq!(out.status.code(), Some(1), "differences are an error: {text}");
    for what in ["10.66.0.0/24", "10.66.1.0/24", "10.67.9.0/32", "pointed to by 2"] {
        assert!(text.contains(what), "names {what}: {text}");
    }
    let json = Command::new(SLUICE)
        .arg("--pin-dir")
        .arg(&t.pin_dir)
        .args(["verify", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("verify --json");
    let differences = v["ipv4"]["differences"].as_u64().unwrap();
    let problems = v["ipv4"]["problems"].as_u64().unwrap();
    println!("figure: damaged tables: {differences} differences, {problems} problems found");
    assert_eq!(differences, 2 + 256, "two /24s and every address of 10.67.9.0/24: {v}");
    assert_eq!(problems, 1, "{v}");

    // A restart with nothing to change takes the tables over at once, and rebuilds what it
    // cannot trust.
    t.kill_daemon();
    let restarted = Instant::now();
    t.start_daemon();
    let repaired = wait_until("the tables repaired", Duration::from_secs(10), || {
        let out =
            Command::new(SLUICE).arg("--pin-dir").arg(&t.pin_dir).arg("verify").output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    println!("after a restart ({:?}):\n{repaired}", restarted.elapsed());
    let log = t.log_tail(400);
    assert!(log.contains("lookup tables adopted"), "{log}");
    assert!(log.contains("rebuilt them rather than trusting them"), "{log}");
}

/// A pin directory holding a map of another layout (the IPv6 trie as pinned before its format
/// entries, ADR 0051: one chunk shorter) is refused before anything is loaded or attached, with
/// a message naming the map and the remedy, `sluice detach`; the map is left as it was, and after
/// `sluice detach` a start takes the directory.
#[test]
fn a_pin_directory_of_an_older_layout_is_refused_with_the_remedy() {
    use sluice_common::{dir24, names, trie6};
    if !privileged() {
        return;
    }
    let mut t = Topology::new(&[("c1", 1), ("srv", 3)]);
    let old = t.pin_dir.join("maps").join(names::TRIE_V6);
    fs::create_dir_all(old.parent().unwrap()).expect("the pin directory");
    let old_entries = (trie6::ENTRIES - trie6::FORMAT_ENTRIES) / dir24::CHUNK;
    let chunk = size_of::<dir24::Chunk>().to_string();
    // BPF_F_MMAPABLE (1024), as the dataplane makes it.
    let entries = old_entries.to_string();
    let args = ["map", "create", old.to_str().unwrap(), "type", "array", "key", "4", "value"];
    netns::run(Command::new("bpftool").args(args).args([
        chunk.as_str(),
        "entries",
        entries.as_str(),
        "name",
        names::TRIE_V6,
        "flags",
        "1024",
    ]))
    .expect("pin a map of the older layout (bpftool)");
    let before = pins(&t.pin_dir);

    let r = start_refused(&t, &["--attach", "r-c1,r-srv"]);
    let after = pins(&t.pin_dir);
    println!(
        "start on an older layout: exit {:?} in {:?}; said: {}",
        r.code,
        r.took,
        r.stderr.trim()
    );
    assert_ne!(r.code, Some(0), "{r:?}");
    assert!(r.stderr.contains(names::TRIE_V6), "the message names the map: {r:?}");
    assert!(r.stderr.contains(&entries), "and what it found: {r:?}");
    assert!(r.stderr.contains("sluice detach"), "and the remedy: {r:?}");
    assert!(!xdp_on(&t.router, "r-c1") && !xdp_on(&t.router, "r-srv"), "nothing attached");
    assert_eq!(after, before, "the pins are those found: {after:?}");

    // The remedy works: detach unpins it, and the next start forwards.
    netns::run(Command::new(SLUICE).arg("--pin-dir").arg(&t.pin_dir).arg("detach"))
        .expect("sluice detach");
    assert!(!old.exists(), "sluice detach removes the map of the older layout");
    t.start_daemon();
    t.wait_ping("c1", &Subnet(3).host_v4());
}
