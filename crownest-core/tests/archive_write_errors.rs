//! A write that fails in the middle of an extraction (here: `EFBIG` from `RLIMIT_FSIZE`)
//! stops the whole pass with an I/O error naming the entry, and leaves nothing behind —
//! whichever writer lane the failing file lands on. The limit applies in a child process
//! (`with_file_size_limit`).
#![allow(clippy::unwrap_used)]

mod archive_common;

use archive_common::*;

const LIMIT: u64 = 1 << 20;

fn archive_with_big_file_in(big_dir: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: String, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    for d in 0..400 {
        for f in 0..3 {
            add(format!("d{d:03}/f{f}"), format!("{d}/{f}").as_bytes());
        }
        if d == big_dir {
            add(format!("d{d:03}/too-big.bin"), &vec![7u8; 3 << 20]);
        }
    }
    gz(&b.into_inner().unwrap())
}

#[test]
fn a_failing_write_on_any_lane_stops_the_pass_and_leaves_nothing() {
    with_file_size_limit(
        "a_failing_write_on_any_lane_stops_the_pass_and_leaves_nothing",
        LIMIT,
        || {
            // Big files in several directories, so that (with several lanes) both the writer
            // thread's own lane and a worker's are hit.
            for big_dir in [100, 101, 102, 103, 104, 105, 106, 107] {
                let gz = archive_with_big_file_in(big_dir);
                assert_write_failure_leaves_nothing(&gz, &format!("d{big_dir:03}/too-big.bin"));
            }
        },
    );
}
