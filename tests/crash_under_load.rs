//! kill -9 of the daemon while writers are busy, then a remount: every version whose close()
//! returned is there and whole, nothing torn is current. A test binary of its own: a test
//! running beside these in one process would fork children (mounts, tools) that inherit the
//! writers' descriptors, and their closes count as closes (docs/SEMANTICS.md, Durability).

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::*;

/// One test at a time: each forks mounts, whose children would inherit the other's writers'
/// descriptors.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The bytes of generation `generation` of `name`: self-describing, so a torn or mixed file
/// cannot pass for a whole version.
fn generation_bytes(name: &str, generation: usize) -> Vec<u8> {
    let unit = format!("{name}#{generation}#");
    let len = 1000 + (generation * 7919 + name.len() * 104_729) % 150_000;
    unit.bytes().cycle().take(len).collect()
}

/// kill -9 while two writers create and rewrite files as fast as they can, five times over:
/// after each remount every file whose close() returned before the kill holds that version
/// or a later whole one, and no file holds anything torn.
#[test]
fn kill_9_under_load_keeps_every_closed_version_whole() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    use std::collections::BTreeMap;
    use std::os::fd::IntoRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let sb = Sandbox::new();
    let closed = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    for round in 0..5 {
        let mut m = sb.mount(&[]);
        check_whole_and_not_older(&sb, &closed.lock().unwrap());
        let killed = Arc::new(AtomicBool::new(false));
        let before = closed.lock().unwrap().values().sum::<usize>();
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let (killed, closed, mnt) = (killed.clone(), closed.clone(), sb.mnt.clone());
                let _ = fs::create_dir(sb.path(&format!("t{t}")));
                std::thread::spawn(move || {
                    for n in 0.. {
                        if killed.load(Ordering::SeqCst) {
                            return;
                        }
                        let (name, generation) =
                            (format!("t{t}/f{}", n % 50), round * 1000 + n / 50);
                        let Ok(mut f) = fs::File::create(mnt.join(&name)) else {
                            return;
                        };
                        if f.write_all(&generation_bytes(&name, generation)).is_err() {
                            return;
                        }
                        // SAFETY: closing the descriptor we own; its result is the point.
                        if unsafe { libc::close(f.into_raw_fd()) } != 0 {
                            return;
                        }
                        // Recorded only if close() returned before the kill began.
                        if !killed.load(Ordering::SeqCst) {
                            closed.lock().unwrap().insert(name, generation);
                        }
                    }
                })
            })
            .collect();
        wait_until("150 closes this round", Duration::from_secs(60), || {
            closed.lock().unwrap().values().sum::<usize>() >= before + 150
        });
        killed.store(true, Ordering::SeqCst);
        m.kill9();
        for w in writers {
            w.join().unwrap();
        }
    }
    let _m = sb.mount(&[]);
    check_whole_and_not_older(&sb, &closed.lock().unwrap());
}

/// Every file under t0/ and t1/ is a whole generation, at least the one last closed.
fn check_whole_and_not_older(sb: &Sandbox, closed: &std::collections::BTreeMap<String, usize>) {
    for t in 0..2 {
        let Ok(entries) = fs::read_dir(sb.path(&format!("t{t}"))) else {
            continue;
        };
        for e in entries {
            let name = format!("t{t}/{}", e.unwrap().file_name().to_str().unwrap());
            let bytes = fs::read(sb.path(&name)).unwrap();
            // The generation the bytes claim, then whether they are all of it.
            let generation = String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
                .strip_prefix(&format!("{name}#"))
                .and_then(|rest| rest.split('#').next()?.parse::<usize>().ok())
                .filter(|g| bytes == generation_bytes(&name, *g))
                .unwrap_or_else(|| panic!("{name}: {} bytes, no whole version", bytes.len()));
            if let Some(at_least) = closed.get(&name) {
                assert!(generation >= *at_least, "{name}: {generation} < {at_least}");
            }
        }
    }
    for name in closed.keys() {
        assert!(sb.path(name).exists(), "{name} was closed before the kill");
    }
}

const EDITED_SIZE: usize = 256 << 10;

/// Generation `g` of an edited object: the base pattern, then for each generation up to `g`
/// a header at 0 naming it and 100 bytes of its own at an offset of its own. Every version
/// is a whole generation, so a torn in-place publish or a wrong reverse delta shows.
fn edited(g: usize) -> Vec<u8> {
    let mut bytes = pattern(EDITED_SIZE, 21);
    for i in 1..=g {
        let (at, chunk) = edit(i);
        bytes[at..at + chunk.len()].copy_from_slice(&chunk);
    }
    bytes[..8].copy_from_slice(&(g as u64).to_le_bytes());
    bytes
}

fn edit(g: usize) -> (usize, Vec<u8>) {
    (
        8 + (g * 40_961) % (EDITED_SIZE - 108),
        vec![(g % 251) as u8; 100],
    )
}

fn generation_of(bytes: &[u8]) -> Option<usize> {
    let g = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    (g < 100_000 && bytes == edited(g)).then_some(g)
}

/// kill -9 while four writers change their big objects in place (overlays, reverse deltas),
/// four times over: after each remount each object is a whole generation, at least the last
/// one whose close() returned, and every old version under `.versions/` reads whole too.
#[test]
fn kill_9_during_in_place_publishes_leaves_every_version_whole() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    use std::collections::BTreeMap;
    use std::os::fd::IntoRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let sb = Sandbox::new();
    let names: Vec<String> = (0..4).map(|i| format!("obj{i}")).collect();
    {
        let _m = sb.mount(&["--delta-threshold", "1"]);
        for n in &names {
            fs::write(sb.path(n), edited(0)).unwrap();
        }
    }
    let closed = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let check = |closed: &BTreeMap<String, usize>| {
        for n in &names {
            let g = generation_of(&fs::read(sb.path(n)).unwrap())
                .unwrap_or_else(|| panic!("{n}: current version not whole"));
            assert!(g >= closed.get(n).copied().unwrap_or(0), "{n}: {g} older");
            for v in versions(&sb.mnt, n) {
                let old = fs::read(sb.path(&format!(".versions/{n}/{v}"))).unwrap();
                assert!(generation_of(&old).is_some(), "{n} version {v} not whole");
            }
        }
    };
    for _round in 0..4 {
        let mut m = sb.mount(&["--delta-threshold", "1"]);
        check(&closed.lock().unwrap());
        let killed = Arc::new(AtomicBool::new(false));
        let before = closed.lock().unwrap().values().sum::<usize>();
        let writers: Vec<_> = names
            .iter()
            .map(|n| {
                let (killed, closed, path, n) =
                    (killed.clone(), closed.clone(), sb.path(n), n.clone());
                std::thread::spawn(move || {
                    loop {
                        let Some(Ok(g)) = fs::read(&path)
                            .ok()
                            .map(|b| generation_of(&b).ok_or(()).map(|g| g + 1))
                        else {
                            return;
                        };
                        if killed.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(f) = fs::OpenOptions::new().write(true).open(&path) else {
                            return;
                        };
                        let (at, chunk) = edit(g);
                        let wrote = f.write_all_at(&chunk, at as u64).is_ok()
                            && f.write_all_at(&(g as u64).to_le_bytes(), 0).is_ok();
                        // SAFETY: closing the descriptor we own; its result is the point.
                        if !wrote || unsafe { libc::close(f.into_raw_fd()) } != 0 {
                            return;
                        }
                        if !killed.load(Ordering::SeqCst) {
                            closed.lock().unwrap().insert(n.clone(), g);
                        }
                    }
                })
            })
            .collect();
        wait_until(
            "40 in-place versions this round",
            Duration::from_secs(60),
            || closed.lock().unwrap().values().sum::<usize>() >= before + 40,
        );
        killed.store(true, Ordering::SeqCst);
        m.kill9();
        for w in writers {
            w.join().unwrap();
        }
    }
    let _m = sb.mount(&["--delta-threshold", "1"]);
    // The last round's old versions are reverse deltas (reading one makes it whole, so the
    // check below comes after): the in-place path is the one exercised.
    let deltas = names
        .iter()
        .flat_map(|n| versions(&sb.mnt, n).into_iter().map(move |v| (n, v)))
        .filter(|(n, v)| meta(&sb.bucket, n, v).is_some_and(|m| m.get("delta").is_some()))
        .count();
    assert!(deltas >= 4, "{deltas} old versions kept as deltas");
    check(&closed.lock().unwrap());
}
