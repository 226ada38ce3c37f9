//! The hash chain proves that no event was dropped, reordered, duplicated or edited.
#![allow(clippy::unwrap_used)]

use crownest_core::event::{
    ChainError, Event, EventKind, GENESIS_HASH, NewEvent, OutputChunk, canonical_json, seal_all,
    verify_chain,
};
use crownest_core::{RunId, RunStatus, Timestamp};

fn chain(n: usize) -> (RunId, Vec<Event>) {
    let id = RunId::new();
    let mut events: Vec<NewEvent> = (0..n - 1)
        .map(|i| NewEvent {
            at: Timestamp::from_millis(1_700_000_000_000 + i as i64),
            kind: EventKind::Stdout(OutputChunk {
                offset: i as u64,
                data: Some(format!("line {i}\n")),
                data_base64: None,
            }),
        })
        .collect();
    events.push(NewEvent::now(EventKind::Terminal {
        status: RunStatus::Succeeded,
        exit_code: Some(0),
        signal: None,
        failure: None,
        duration_ms: 5,
        output: None,
        sandbox: None,
        crownest_version: None,
        bundle_digest: None,
    }));
    let sealed = seal_all(GENESIS_HASH, &id, 1, events);
    (id, sealed)
}

#[test]
fn an_intact_chain_verifies() {
    let (id, events) = chain(10);
    let s = verify_chain(&id, &events).unwrap();
    assert_eq!(s.count, 10);
    assert_eq!(s.chain_head, events[9].hash);
}

#[test]
fn a_dropped_event_is_detected() {
    let (id, mut events) = chain(10);
    events.remove(4);
    assert!(matches!(
        verify_chain(&id, &events),
        Err(ChainError::SeqGap {
            index: 4,
            expected: 5,
            found: 6
        })
    ));
    // Dropping the tail is caught against the recorded head.
    let (id, mut events) = chain(10);
    let full = verify_chain(&id, &events).unwrap();
    events.truncate(9);
    assert!(matches!(
        crownest_core::event::verify_against(&id, &events, &full),
        Err(ChainError::HeadMismatch { .. })
    ));
}

#[test]
fn a_reordered_event_is_detected() {
    let (id, mut events) = chain(10);
    events.swap(2, 3);
    assert!(verify_chain(&id, &events).is_err());
    // Even with seqs rewritten to look gap-free, the hashes no longer chain.
    let (id, mut events) = chain(10);
    events.swap(2, 3);
    events[2].seq = 3;
    events[3].seq = 4;
    assert!(matches!(
        verify_chain(&id, &events),
        Err(ChainError::HashMismatch { .. })
    ));
}

#[test]
fn a_duplicated_event_is_detected() {
    let (id, mut events) = chain(10);
    let dup = events[5].clone();
    events.insert(6, dup);
    assert!(matches!(
        verify_chain(&id, &events),
        Err(ChainError::SeqGap { .. })
    ));
}

#[test]
fn an_edited_event_is_detected() {
    let (id, mut events) = chain(10);
    if let EventKind::Stdout(c) = &mut events[3].kind {
        c.data = Some("forged\n".into());
    }
    assert!(matches!(
        verify_chain(&id, &events),
        Err(ChainError::HashMismatch { seq: 4, .. })
    ));
    // Editing and re-hashing one event breaks the next link.
    let (id, mut events) = chain(10);
    events[3].at = Timestamp::from_millis(0);
    let resealed = seal_all(
        &events[2].hash,
        &id,
        4,
        vec![NewEvent {
            at: events[3].at,
            kind: events[3].kind.clone(),
        }],
    );
    events[3] = resealed[0].clone();
    assert!(matches!(
        verify_chain(&id, &events),
        Err(ChainError::HashMismatch { seq: 5, .. })
    ));
}

#[test]
fn events_after_terminal_are_detected() {
    let (id, events) = chain(3);
    let late = seal_all(
        &events[2].hash,
        &id,
        4,
        vec![NewEvent::now(EventKind::Heartbeat {})],
    );
    let mut all = events.clone();
    all.extend(late);
    assert!(matches!(
        verify_chain(&id, &all),
        Err(ChainError::TerminalNotLast { seq: 3 })
    ));
}

#[test]
fn hashes_survive_a_json_round_trip() {
    let (id, events) = chain(5);
    let lines: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let back: Vec<Event> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    verify_chain(&id, &back).unwrap();
}

#[test]
fn canonical_json_sorts_keys_and_has_no_whitespace() {
    let v: serde_json::Value =
        serde_json::from_str(r#"{ "b": [1, {"z": 1, "a": "x"}], "a": null }"#).unwrap();
    assert_eq!(
        String::from_utf8(canonical_json(&v)).unwrap(),
        r#"{"a":null,"b":[1,{"a":"x","z":1}]}"#
    );
}

/// The chain hash is sha256(previous hash bytes ‖ canonical JSON of the event without its
/// hash), pinned here against a hand-written canonical form, with escapes (NUL, other
/// control characters, quote, backslash) and non-ASCII text, so a faster implementation
/// can never change stored hashes.
#[test]
fn the_hash_is_sha256_of_the_previous_hash_and_the_canonical_event() {
    use sha2::{Digest, Sha256};
    let id = RunId::parse("run_0192aa00000070008000000000000001").unwrap();
    let at = Timestamp::from_millis(1_764_434_849_123);
    let data = "a\u{0}b\u{1b}[1m\"q\"\\\n\té✓🚀\u{7f}".to_owned();
    let sealed = seal_all(
        GENESIS_HASH,
        &id,
        1,
        vec![NewEvent {
            at,
            kind: EventKind::Stdout(OutputChunk {
                offset: 7,
                data: Some(data),
                data_base64: None,
            }),
        }],
    );
    let expected_json = format!(
        "{{\"at\":\"{}\",\"data\":\"a\\u0000b\\u001b[1m\\\"q\\\"\\\\\\n\\t\u{e9}\u{2713}\u{1f680}\u{7f}\",\"offset\":7,\"runId\":\"run_0192aa00000070008000000000000001\",\"seq\":1,\"type\":\"stdout\"}}",
        serde_json::to_value(at).unwrap().as_str().unwrap()
    );
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(expected_json.as_bytes());
    assert_eq!(sealed[0].hash, hex::encode(h.finalize()));
    // And the next event chains on this one's hash bytes.
    let second = seal_all(
        &sealed[0].hash,
        &id,
        2,
        vec![NewEvent {
            at,
            kind: EventKind::Status {
                status: RunStatus::Running,
                previous: None,
            },
        }],
    );
    let mut h = Sha256::new();
    h.update(hex::decode(&sealed[0].hash).unwrap());
    h.update(
        format!(
            "{{\"at\":\"{}\",\"runId\":\"{id}\",\"seq\":2,\"status\":\"running\",\"type\":\"status\"}}",
            serde_json::to_value(at).unwrap().as_str().unwrap()
        )
        .as_bytes(),
    );
    assert_eq!(second[0].hash, hex::encode(h.finalize()));
    verify_chain(&id, &[sealed[0].clone(), second[0].clone()]).unwrap();
}
