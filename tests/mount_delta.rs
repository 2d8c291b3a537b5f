//! Reverse deltas through a real mount: a small change to a big object is made in place and
//! the old version keeps only the bytes that changed (docs/FORMAT.md, "Reverse deltas").

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Duration;

use common::*;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn key_dir_entries(sb: &Sandbox, key: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(sb.bucket.join(".bucketfs/versions").join(key))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `key`'s version `id` is stored whole, as a plain file (no reverse delta), with `bytes`.
/// The metadata is read first: reading a delta version's bytes rebuilds it into a plain file.
fn assert_kept_whole(sb: &Sandbox, key: &str, id: &str, bytes: &[u8]) {
    let m = meta(&sb.bucket, key, id).unwrap();
    assert!(m.get("delta").is_none(), "{key} {id} is a delta: {m}");
    assert!(key_dir_entries(sb, key).contains(&format!("@{id}.data")));
    assert!(fs::read(sb.path(".versions").join(key).join(id)).unwrap() == bytes);
}

#[test]
fn a_one_byte_change_to_a_big_object_keeps_one_byte_of_history() {
    let sb = Sandbox::new();
    let m = sb.mount(&[]);
    let original = pattern(9 << 20, 1);
    fs::write(sb.path("big"), &original).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(sb.path("big"))
        .unwrap();
    f.write_all_at(b"!", 4 << 20).unwrap();
    drop(f);
    let mut expected = original.clone();
    expected[4 << 20] = b'!';
    assert!(fs::read(sb.path("big")).unwrap() == expected);

    let v = versions(&sb.mnt, "big");
    assert_eq!(v.len(), 2, "{v:?}");
    // On disk: the old version has no bytes of its own, one saved byte and a delta.
    let names = key_dir_entries(&sb, "big");
    assert!(!names.contains(&format!("@{}.data", v[0])), "{names:?}");
    let undo = sb
        .bucket
        .join(".bucketfs/versions/big")
        .join(format!("@{}.undo", v[0]));
    assert_eq!(fs::read(&undo).unwrap(), vec![original[4 << 20]]);
    let old_meta = meta(&sb.bucket, "big", &v[0]).unwrap();
    assert_eq!(old_meta["delta"]["base"], v[1].as_str(), "{old_meta}");
    // Deltas need format 2; the first write, an implicit version, already raised it to 3.
    assert_eq!(
        fs::read_to_string(sb.bucket.join(".bucketfs/format"))
            .unwrap()
            .trim(),
        "3"
    );
    // The key path is still a plain file with the new bytes, for anyone reading the bucket.
    assert!(fs::read(sb.bucket.join("big")).unwrap() == expected);

    // Reading the old version rebuilds it into a plain file, once.
    assert!(fs::read(sb.path(".versions/big").join(&v[0])).unwrap() == original);
    assert!(key_dir_entries(&sb, "big").contains(&format!("@{}.data", v[0])));
    assert!(!undo.exists());
    assert!(
        meta(&sb.bucket, "big", &v[0])
            .unwrap()
            .get("delta")
            .is_none()
    );
    m.unmount();
}

/// One writer session on an overlay: writes, reads back through the same descriptor, a
/// truncate and a write past the end, checked against the same operations on a Vec.
fn edit_session(path: &std::path::Path, model: &mut Vec<u8>, seed: u8) {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = model.len();
    let chunk = pattern(5000, seed);
    for off in [0usize, len / 3, len - 100] {
        f.write_all_at(&chunk[..100], off as u64).unwrap();
        if model.len() < off + 100 {
            model.resize(off + 100, 0);
        }
        model[off..off + 100].copy_from_slice(&chunk[..100]);
    }
    let mut back = vec![0u8; 300];
    f.read_exact_at(&mut back, (len / 3 - 100) as u64).unwrap();
    assert!(
        back[..] == model[len / 3 - 100..len / 3 + 200],
        "read through the overlay"
    );
    // Truncate, then write past the end: the gap reads as zeros, not as the old bytes. A tenth
    // goes: cutting half would change as much as a copy costs, which publishes a copy instead.
    let cut = len - len / 10;
    f.set_len(cut as u64).unwrap();
    model.truncate(cut);
    f.seek(SeekFrom::Start((cut + 1000) as u64)).unwrap();
    f.write_all(&chunk).unwrap();
    model.resize(cut + 1000, 0);
    model.extend_from_slice(&chunk);
    let mut whole = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut whole).unwrap();
    assert!(whole == *model, "whole file through the overlay");
}

#[test]
fn overlay_edits_read_back_and_every_version_stays_whole() {
    let sb = Sandbox::new();
    let m = sb.mount(&["--delta-threshold", "1"]);
    let path = sb.path("doc");
    let mut model = pattern(200_000, 7);
    fs::write(&path, &model).unwrap();
    let mut models = vec![model.clone()];
    for seed in 1..=3 {
        edit_session(&path, &mut model, seed);
        models.push(model.clone());
    }
    assert!(fs::read(&path).unwrap() == model);
    let v = versions(&sb.mnt, "doc");
    assert_eq!(v.len(), 4, "{v:?}");
    let undo_files = key_dir_entries(&sb, "doc")
        .iter()
        .filter(|n| n.ends_with(".undo"))
        .count();
    assert_eq!(undo_files, 3, "three old versions stored as deltas");

    // Forgetting the middle of the chain keeps the others whole.
    fs::remove_file(sb.path(".versions/doc").join(&v[2])).unwrap();
    for (i, id) in v.iter().enumerate() {
        if i == 2 {
            continue;
        }
        let got = fs::read(sb.path(".versions/doc").join(id)).unwrap();
        assert!(got == models[i], "version {i} after deleting version 2");
    }
    // Forgetting the current version makes the previous one current, with its own bytes.
    fs::remove_file(sb.path(".versions/doc").join(&v[3])).unwrap();
    assert!(fs::read(&path).unwrap() == models[1]);
    m.unmount();

    // A remount reads the same history.
    let _m = sb.mount(&[]);
    assert!(fs::read(sb.path(".versions/doc").join(&v[0])).unwrap() == models[0]);
    assert!(fs::read(&path).unwrap() == models[1]);
}

/// `mv` shares a file's bytes between the new key's version and the old key's (one inode): a
/// later small change to the new key must not be made in that inode, which would rewrite the
/// old key's history too.
#[test]
fn a_change_to_a_renamed_object_leaves_the_old_keys_version_whole() {
    let sb = Sandbox::new();
    let _m = sb.mount(&[]);
    let original = pattern(9 << 20, 3);
    fs::write(sb.path("big.tmp"), &original).unwrap();
    fs::rename(sb.path("big.tmp"), sb.path("big")).unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(sb.path("big"))
        .unwrap();
    f.write_all_at(b"!", 100).unwrap();
    drop(f);
    let mut expected = original.clone();
    expected[100] = b'!';
    assert!(fs::read(sb.path("big")).unwrap() == expected);

    let old = versions(&sb.mnt, "big.tmp");
    assert_eq!(
        old.len(),
        2,
        "the version and the rename's delete marker: {old:?}"
    );
    assert_kept_whole(&sb, "big.tmp", &old[0], &original);
    let v = versions(&sb.mnt, "big");
    assert_eq!(v.len(), 2, "{v:?}");
    assert_kept_whole(&sb, "big", &v[0], &original);
}

#[test]
fn a_version_being_read_is_never_changed_in_place() {
    let sb = Sandbox::new();
    let _m = sb.mount(&["--delta-threshold", "1"]);
    let path = sb.path("k");
    let original = pattern(100_000, 3);
    fs::write(&path, &original).unwrap();
    let v = versions(&sb.mnt, "k");
    let mut reader = fs::File::open(sb.path(".versions/k").join(&v[0])).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"changed", 10).unwrap();
    drop(f);
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert!(
        got == original,
        "an open reader of the old version sees its bytes"
    );
    let v = versions(&sb.mnt, "k");
    assert_eq!(v.len(), 2);
    assert!(fs::read(sb.path(".versions/k").join(&v[0])).unwrap() == original);
}

/// The copy that makes a scattered overlay whole goes a few MiB per hold of the filesystem
/// lock (so other callers are not stalled for a whole big file): the steps together must
/// still give the writer's view, with the truncation and the writes past it.
#[test]
fn an_overlay_made_whole_in_steps_keeps_every_write_and_the_truncation() {
    let sb = Sandbox::new();
    let _m = sb.mount(&["--delta-threshold", "1"]);
    let path = sb.path("stepped");
    let original = pattern(20 << 20, 5);
    fs::write(&path, &original).unwrap();
    let cut = (13 << 20) + 5; // inside the second step
    let mut expected = original[..cut].to_vec();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.set_len(cut as u64).unwrap();
    for i in 0..5000usize {
        let at = i * 4093;
        f.write_all_at(b"#", at as u64).unwrap();
        if expected.len() <= at {
            expected.resize(at + 1, 0);
        }
        expected[at] = b'#';
    }
    let mut seen = vec![0; expected.len()];
    f.read_exact_at(&mut seen, 0).unwrap();
    assert!(
        seen == expected,
        "the writer reads its own view before close"
    );
    drop(f);
    assert!(fs::read(&path).unwrap() == expected);
    let v = versions(&sb.mnt, "stepped");
    assert_eq!(v.len(), 2);
    assert!(fs::read(sb.path(".versions/stepped").join(&v[0])).unwrap() == original);
}

/// Rewriting most of a big object in place (`dd conv=notrunc`, a database file) changes more
/// than a copy would: the publish keeps the old version whole and renames the filled-in
/// staged file, instead of saving and overwriting every changed byte under the locks.
#[test]
fn a_big_object_rewritten_for_the_most_part_is_published_as_a_full_copy() {
    let sb = Sandbox::new();
    let _m = sb.mount(&["--delta-threshold", "1"]);
    let path = sb.path("rewritten");
    let original = pattern(3 << 20, 7);
    fs::write(&path, &original).unwrap();
    let mut expected = original.clone();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let new_bytes = pattern(2 << 20, 99);
    f.write_all_at(&new_bytes, 1 << 20).unwrap(); // two thirds rewritten
    expected[1 << 20..].copy_from_slice(&new_bytes);
    drop(f);
    assert!(fs::read(&path).unwrap() == expected);
    let v = versions(&sb.mnt, "rewritten");
    assert_eq!(v.len(), 2);
    assert_kept_whole(&sb, "rewritten", &v[0], &original);
    assert!(fs::read(sb.path(".versions/rewritten").join(&v[1])).unwrap() == expected);
}

#[test]
fn scattered_writes_turn_an_overlay_into_a_full_copy() {
    let sb = Sandbox::new();
    let _m = sb.mount(&["--delta-threshold", "1"]);
    let path = sb.path("scattered");
    let original = pattern(40_000, 9);
    fs::write(&path, &original).unwrap();
    let mut expected = original.clone();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    for i in 0..5000u64 {
        f.write_all_at(b"#", i * 8).unwrap();
        expected[(i * 8) as usize] = b'#';
    }
    drop(f);
    assert!(fs::read(&path).unwrap() == expected);
    let v = versions(&sb.mnt, "scattered");
    assert_eq!(v.len(), 2);
    // Past 4096 ranges the old version stays a plain file: no delta was made.
    assert_kept_whole(&sb, "scattered", &v[0], &original);
}

/// Writes to a big object go through the daemon (its overlay records every range), in the
/// kernel's direct I/O mode: they skip the page cache, and several threads' writes to the one
/// file run at once instead of queueing on the inode lock. None of that may cost a byte. Four
/// threads write scattered bytes through descriptors of their own, past the 4,096 ranges at
/// which the overlay is filled from the old version while the others go on writing; the old
/// version stays whole, a reader opened meanwhile sees what they wrote, a shared mapping of a
/// writer's descriptor works and is published, and a read through a writer's descriptor
/// reaches the daemon every time (no page cache).
#[test]
fn parallel_writers_of_a_big_object_keep_every_byte_and_the_old_version() {
    let sb = Sandbox::new();
    let m = sb.mount(&["--delta-threshold", "1"]);
    let path = sb.path("shared");
    let original = pattern(1 << 20, 3);
    fs::write(&path, &original).unwrap();
    let open_rw = |p: &std::path::Path| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .unwrap()
    };
    let mut expected = original.clone();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(5));
    let writers: Vec<_> = (0..4u8)
        .map(|t| {
            let (f, barrier) = (open_rw(&path), barrier.clone());
            for k in (u64::from(t)..8000).step_by(4) {
                expected[(k * 100) as usize] = b'a' + t;
            }
            std::thread::spawn(move || {
                barrier.wait();
                for k in (u64::from(t)..8000).step_by(4) {
                    f.write_all_at(&[b'a' + t], k * 100).unwrap();
                }
                f
            })
        })
        .collect();
    // A reader that opens the file meanwhile shares the writers' bytes: its page cache must
    // not keep what it read before they wrote.
    let reader = fs::File::open(&path).unwrap();
    let mut byte = [0u8; 1];
    reader.read_exact_at(&mut byte, 400).unwrap();
    assert_eq!(byte[0], original[400]);
    barrier.wait();
    let files: Vec<fs::File> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    reader.read_exact_at(&mut byte, 400).unwrap();
    assert_eq!(byte[0], b'a', "the reader kept a stale page");
    drop(reader);

    let ino = fs::metadata(&path).unwrap().ino();
    let reads_of_block_0 = || {
        let needle = format!("ino {ino:#018x} READ");
        m.log()
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("offset Ok(0),"))
            .count()
    };
    let before = reads_of_block_0();
    let mut block = [0u8; 4096];
    for _ in 0..2 {
        files[0].read_exact_at(&mut block, 0).unwrap();
        assert!(block[..] == expected[..4096]);
    }
    assert_eq!(
        reads_of_block_0(),
        before + 2,
        "a writer's reads were served from the page cache"
    );

    // SAFETY: a fresh shared mapping of 4 KiB of an open file, unmapped before the file is
    // closed; nothing else refers to it.
    unsafe {
        use std::os::fd::AsRawFd;
        let at = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            files[1].as_raw_fd(),
            0,
        );
        assert_ne!(
            at,
            libc::MAP_FAILED,
            "a writer's shared mapping: {}",
            std::io::Error::last_os_error()
        );
        std::ptr::copy_nonoverlapping(b"MAPPED".as_ptr(), at.cast::<u8>().add(1), 6);
        assert_eq!(libc::msync(at, 4096, libc::MS_SYNC), 0);
        assert_eq!(libc::munmap(at, 4096), 0);
    }
    expected[1..7].copy_from_slice(b"MAPPED");
    drop(files);

    assert!(fs::read(&path).unwrap() == expected, "bytes differ");
    // One version for the four writers: nothing is published while a writer is still open.
    let v = versions(&sb.mnt, "shared");
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(fs::read(sb.path(".versions/shared").join(&v[0])).unwrap() == original);
    assert!(fs::read(sb.path(".versions/shared").join(&v[1])).unwrap() == expected);
}

/// fallocate's punched holes and zeroed ranges are writes of zeros to an overlay: read back
/// through the writer and after its close, and only the old version keeps the bytes.
#[test]
fn holes_punched_in_a_big_object_are_zeros_in_its_new_version_only() {
    use std::os::fd::AsRawFd;
    let sb = Sandbox::new();
    let _m = sb.mount(&["--delta-threshold", "1"]);
    let path = sb.path("img");
    let original = pattern(1 << 20, 7);
    fs::write(&path, &original).unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let fallocate = |mode: i32, offset: usize, len: usize| {
        // SAFETY: fallocate on a descriptor the File owns.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    };
    let size = original.len();
    fallocate(
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        4096,
        8192,
    );
    fallocate(libc::FALLOC_FL_ZERO_RANGE, size - 10, 100);
    let mut expected = original.clone();
    expected[4096..12288].fill(0);
    expected.resize(size + 90, 0);
    expected[size - 10..].fill(0);
    let mut seen = vec![0; expected.len()];
    f.read_exact_at(&mut seen, 0).unwrap();
    assert!(
        seen == expected,
        "the writer reads its own view before close"
    );
    drop(f);
    assert!(fs::read(&path).unwrap() == expected);
    let v = versions(&sb.mnt, "img");
    assert_eq!(v.len(), 2);
    let old = meta(&sb.bucket, "img", &v[0]).unwrap();
    assert!(old.get("delta").is_some(), "published in place: {old}");
    assert!(fs::read(sb.path(".versions/img").join(&v[0])).unwrap() == original);
}

/// The write that takes an overlay past 4,096 ranges does not copy the old version's bytes
/// itself (that stalled it for seconds on a big file): a thread fills the overlay while the
/// writer is still open and writing, and nothing written meanwhile is lost.
#[test]
fn an_overlay_past_its_ranges_is_filled_while_its_writer_goes_on() {
    let sb = Sandbox::new();
    let m = sb.mount(&["--delta-threshold", "1"]);
    let path = sb.path("busy");
    let original = pattern(24 << 20, 3);
    fs::write(&path, &original).unwrap();
    let mut expected = original.clone();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut write = |at: usize, byte: u8| {
        f.write_all_at(&[byte], at as u64).unwrap();
        expected[at] = byte;
    };
    for i in 0..5000 {
        write(i * 4099, b'#');
    }
    wait_until(
        "the overlay filled with the writer still open",
        Duration::from_secs(30),
        || {
            m.log()
                .contains("overlay filled, a full copy now (by overlay-fill thread)")
        },
    );
    for i in 0..100 {
        write(i * 65_537 + 1, b'%');
    }
    let mut seen = vec![0; expected.len()];
    f.read_exact_at(&mut seen, 0).unwrap();
    assert!(
        seen == expected,
        "the writer reads its own view before close"
    );
    drop(f);
    assert!(fs::read(&path).unwrap() == expected);
    let v = versions(&sb.mnt, "busy");
    assert_eq!(v.len(), 2);
    assert_kept_whole(&sb, "busy", &v[0], &original);
}
