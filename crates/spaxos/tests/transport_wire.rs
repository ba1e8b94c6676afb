//! Wire encoding and framing: round trips of every message kind, and
//! rejection (never a panic) of anything else.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message as _;
use spaxos::transport::frame::{encode_frame, encode_message_frame, FrameDecoder, FrameError};
use spaxos::transport::wire::{self, WireError};
use spaxos_core::{Ballot, Body, Message, PromiseEntry, Value};

fn arb_ballot() -> impl Strategy<Value = Ballot> {
    prop_oneof![
        Just(Ballot::ZERO),
        (any::<u64>(), any::<u64>()).prop_map(|(round, node)| Ballot::new(round, node)),
    ]
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..48).prop_map(Bytes::from)
}

fn arb_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Noop),
        (1..=u64::MAX, arb_bytes()).prop_map(|(reqid, value)| Value::One { reqid, value }),
        (1..=u64::MAX, proptest::collection::vec(arb_bytes(), 0..4)).prop_map(|(reqid, values)| {
            Value::Many {
                reqid,
                values: Arc::from(values),
            }
        }),
    ]
}

fn arb_entries() -> impl Strategy<Value = Vec<(u64, Value)>> {
    proptest::collection::vec((any::<u64>(), arb_value()), 0..6)
}

fn arb_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (arb_ballot(), any::<u64>()).prop_map(|(ballot, index)| Body::Prepare { ballot, index }),
        (
            arb_ballot(),
            any::<u64>(),
            arb_ballot(),
            proptest::option::of(arb_value())
        )
            .prop_map(|(ballot, index, accepted, value)| Body::Promise {
                ballot,
                index,
                accepted,
                value
            }),
        (arb_ballot(), any::<u64>())
            .prop_map(|(ballot, from_index)| Body::PrepareRange { ballot, from_index }),
        (
            arb_ballot(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(
                (any::<u64>(), arb_ballot(), arb_value(), any::<bool>()).prop_map(
                    |(index, accepted, value, chosen)| PromiseEntry {
                        index,
                        accepted,
                        value,
                        chosen
                    }
                ),
                0..5
            )
        )
            .prop_map(
                |(ballot, from_index, chosen_through, entries)| Body::PromiseRange {
                    ballot,
                    from_index,
                    chosen_through,
                    entries
                }
            ),
        (arb_ballot(), arb_entries(), any::<u64>()).prop_map(
            |(ballot, entries, chosen_through)| Body::Accept {
                ballot,
                entries: entries.into(),
                chosen_through
            }
        ),
        (arb_ballot(), proptest::collection::vec(any::<u64>(), 0..8))
            .prop_map(|(ballot, indices)| Body::Accepted { ballot, indices }),
        (arb_ballot(), arb_ballot(), any::<u64>()).prop_map(|(ballot, promised, index)| {
            Body::Reject {
                ballot,
                promised,
                index,
            }
        }),
        (arb_ballot(), any::<u64>(), any::<u64>()).prop_map(
            |(ballot, chosen_through, max_index)| Body::Heartbeat {
                ballot,
                chosen_through,
                max_index
            }
        ),
        (arb_ballot(), any::<u64>(), any::<u64>()).prop_map(
            |(ballot, chosen_through, max_index)| Body::HeartbeatAck {
                ballot,
                chosen_through,
                max_index
            }
        ),
        arb_entries().prop_map(|entries| Body::Learn { entries }),
        (any::<u64>(), any::<u64>()).prop_map(|(from_index, to_index)| Body::CatchupRequest {
            from_index,
            to_index
        }),
        any::<u64>().prop_map(|first_index| Body::Compacted { first_index }),
        proptest::collection::vec(arb_value(), 0..5).prop_map(|values| Body::Forward { values }),
        proptest::collection::vec((any::<u64>(), any::<u64>()), 0..6)
            .prop_map(|assigned| Body::ForwardAck { assigned }),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    (1..=u64::MAX, 1..=u64::MAX, arb_body()).prop_map(|(from, to, body)| Message { from, to, body })
}

proptest! {
    #[test]
    fn every_message_round_trips(msg in arb_message()) {
        let encoded = wire::encode_message(&msg);
        prop_assert_eq!(&wire::decode_message(&encoded).unwrap(), &msg);
        prop_assert_eq!(&wire::decode_message_bytes(Bytes::from(encoded)).unwrap(), &msg);
    }

    #[test]
    fn frames_round_trip_across_any_split(
        msgs in proptest::collection::vec(arb_message(), 1..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut stream = Vec::new();
        for msg in &msgs {
            encode_message_frame(msg, 1 << 20, &mut stream).unwrap();
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut decoded = Vec::new();
        for pair in cuts.windows(2) {
            decoder.extend(&stream[pair[0]..pair[1]]);
            while let Some(payload) = decoder.next_frame().unwrap() {
                decoded.push(wire::decode_message_bytes(payload).unwrap());
            }
        }
        prop_assert_eq!(decoded, msgs);
        prop_assert_eq!(decoder.buffered_len(), 0);
    }

    /// Arbitrary bytes never panic the decoders; they decode or give an error.
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = wire::decode_message(&data);
        let mut decoder = FrameDecoder::new(64);
        decoder.extend(&data);
        while let Ok(Some(payload)) = decoder.next_frame() {
            let _ = wire::decode_message_bytes(payload);
        }
    }

    /// Flipping any bit of a framed message is caught by the checksum or the
    /// length check, or still decodes (a flip in the length can only shorten
    /// or lengthen the frame).
    #[test]
    fn corrupted_frames_are_detected(msg in arb_message(), bit in any::<prop::sample::Index>()) {
        let mut stream = Vec::new();
        encode_message_frame(&msg, 1 << 20, &mut stream).unwrap();
        let bit = bit.index(stream.len() * 8);
        stream[bit / 8] ^= 1 << (bit % 8);
        let mut decoder = FrameDecoder::new(1 << 20);
        decoder.extend(&stream);
        match decoder.next_frame() {
            Err(_) | Ok(None) => {}
            Ok(Some(payload)) => {
                // Only a flip in the length field can leave the CRC valid.
                prop_assert!(bit < 32, "bit {} flipped undetected", bit);
                let _ = wire::decode_message_bytes(payload);
            }
        }
    }
}

#[test]
fn decoding_is_zero_copy() {
    let payload = Bytes::from(vec![7u8; 1000]);
    let msg = Message {
        from: 1,
        to: 2,
        body: Body::Accept {
            ballot: Ballot::new(1, 1),
            entries: vec![(
                5,
                Value::One {
                    reqid: 9,
                    value: payload,
                },
            )]
            .into(),
            chosen_through: 4,
        },
    };
    let encoded = Bytes::from(wire::encode_message(&msg));
    let range = encoded.as_ptr_range();
    let decoded = wire::decode_message_bytes(encoded.clone()).unwrap();
    let Body::Accept { entries, .. } = &decoded.body else {
        panic!("not an accept")
    };
    let value = &entries[0].1.values()[0];
    assert!(range.contains(&value.as_ptr()), "value was copied");
}

fn wire_message(body: Option<wire::WireBody>) -> Vec<u8> {
    wire::WireMessage {
        from: 1,
        to: 2,
        body,
    }
    .encode_to_vec()
}

#[test]
fn missing_body_is_rejected() {
    assert_eq!(
        wire::decode_message(&wire_message(None)),
        Err(WireError::MissingBody)
    );
    assert_eq!(wire::decode_message(&[]), Err(WireError::MissingBody));
}

#[test]
fn unknown_kind_is_rejected() {
    // from=1, to=2, then field 99 (length-delimited, empty): a kind from
    // some future version.
    let mut bytes = wire_message(None);
    bytes.extend_from_slice(&[0x9a, 0x06, 0x00]);
    assert_eq!(wire::decode_message(&bytes), Err(WireError::MissingBody));
}

#[test]
fn nonsense_fields_are_rejected() {
    let prepare = |ballot| {
        Some(wire::WireBody::Prepare(wire::WirePrepare {
            ballot,
            index: 1,
        }))
    };
    assert_eq!(
        wire::decode_message(&wire_message(prepare(None))),
        Err(WireError::Missing("ballot"))
    );
    let zero_from = wire::WireMessage {
        from: 0,
        to: 2,
        body: prepare(Some(wire::WireBallot { round: 1, node: 1 })),
    };
    assert!(matches!(
        wire::decode_message(&zero_from.encode_to_vec()),
        Err(WireError::Invalid(_))
    ));

    let learn = |value: wire::WireValue| {
        wire_message(Some(wire::WireBody::Learn(wire::WireLearn {
            entries: vec![wire::WireEntry {
                index: 1,
                value: Some(value),
            }],
        })))
    };
    let bad_values = [
        // unknown kind
        wire::WireValue {
            kind: 42,
            reqid: 1,
            value: Bytes::new(),
            values: vec![],
        },
        // unspecified kind
        wire::WireValue {
            kind: 0,
            reqid: 1,
            value: Bytes::new(),
            values: vec![],
        },
        // reqid 0
        wire::WireValue {
            kind: wire::WireValueKind::One as i32,
            reqid: 0,
            value: Bytes::from_static(b"x"),
            values: vec![],
        },
        // no-op with a payload
        wire::WireValue {
            kind: wire::WireValueKind::Noop as i32,
            reqid: 0,
            value: Bytes::from_static(b"x"),
            values: vec![],
        },
    ];
    for value in bad_values {
        assert!(
            matches!(
                wire::decode_message(&learn(value.clone())),
                Err(WireError::Invalid(_))
            ),
            "{value:?}"
        );
    }
    let no_value = wire_message(Some(wire::WireBody::Learn(wire::WireLearn {
        entries: vec![wire::WireEntry {
            index: 1,
            value: None,
        }],
    })));
    assert_eq!(
        wire::decode_message(&no_value),
        Err(WireError::Missing("value"))
    );
    let ack = wire_message(Some(wire::WireBody::ForwardAck(wire::WireForwardAck {
        reqids: vec![1, 2],
        indices: vec![1],
    })));
    assert!(matches!(
        wire::decode_message(&ack),
        Err(WireError::Invalid(_))
    ));
    // Truncated protobuf.
    let full = wire::encode_message(&Message {
        from: 1,
        to: 2,
        body: Body::Compacted { first_index: 300 },
    });
    assert!(matches!(
        wire::decode_message(&full[..full.len() - 1]),
        Err(WireError::Protobuf(_))
    ));
}

#[test]
fn oversized_frame_length_is_refused_before_the_payload() {
    let mut decoder = FrameDecoder::new(1000);
    decoder.extend(&u32::MAX.to_le_bytes());
    decoder.extend(&0u32.to_le_bytes());
    assert_eq!(
        decoder.next_frame(),
        Err(FrameError::TooLarge {
            len: u32::MAX as usize,
            max: 1000
        })
    );
}

#[test]
fn bad_checksum_is_refused() {
    let mut stream = Vec::new();
    encode_frame(b"payload", &mut stream);
    let last = stream.len() - 1;
    stream[last] ^= 0xff;
    let mut decoder = FrameDecoder::new(1000);
    decoder.extend(&stream);
    assert!(matches!(
        decoder.next_frame(),
        Err(FrameError::BadChecksum { .. })
    ));
}

#[test]
fn message_over_the_frame_limit_is_not_encoded() {
    let msg = Message {
        from: 1,
        to: 2,
        body: Body::Learn {
            entries: vec![(
                1,
                Value::One {
                    reqid: 1,
                    value: Bytes::from(vec![0u8; 2000]),
                },
            )],
        },
    };
    let mut out = vec![1, 2, 3];
    let error = encode_message_frame(&msg, 1000, &mut out).unwrap_err();
    assert!(matches!(error, FrameError::TooLarge { max: 1000, .. }));
    assert_eq!(out, vec![1, 2, 3], "nothing appended");
}
