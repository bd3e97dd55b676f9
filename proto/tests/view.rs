//! `BatchView::parse` and `BatchView::request_batch` against prost: on random valid batches,
//! on corrupted, truncated and arbitrary bytes, and on random wire tokens (unpacked, repeated,
//! unknown and wrongly typed fields) the reader must succeed exactly when prost does and then
//! yield the same values. Hand-built encodings pin each wire rule; an ignored test measures the
//! reader against `prost::Message::decode`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;
use wattson_proto::synthetic::{self, Shape};
use wattson_proto::v1::ingest_request::Payload;
use wattson_proto::v1::{
    AgentLosses, Batch, EnergyDomain, Frame, Function, Host, IngestRequest, IntervalProfile,
    Process, Sample, Stack,
};
use wattson_proto::view::{BatchView, RequestBatch};

// ---- comparing views ----

/// Equal views, doubles compared by bit pattern (NaN payloads included).
fn same(a: &BatchView<'_>, b: &BatchView<'_>) -> bool {
    fn bits(v: &BatchView<'_>) -> Vec<u64> {
        let p = v.profiles.iter().flat_map(|p| {
            [
                p.interval_microjoules,
                p.idle_microjoules,
                p.attributed_microjoules,
            ]
        });
        let d = v.all_domains.iter().map(|d| d.microjoules);
        let s = v.all_samples.iter().map(|s| s.microjoules);
        p.chain(d).chain(s).map(f64::to_bits).collect()
    }
    fn zeroed<'a>(v: &BatchView<'a>) -> BatchView<'a> {
        let mut v = v.clone();
        for p in &mut v.profiles {
            p.interval_microjoules = 0.0;
            p.idle_microjoules = 0.0;
            p.attributed_microjoules = 0.0;
        }
        v.all_domains.iter_mut().for_each(|d| d.microjoules = 0.0);
        v.all_samples.iter_mut().for_each(|s| s.microjoules = 0.0);
        v
    }
    bits(a) == bits(b) && zeroed(a) == zeroed(b)
}

/// Parses `bytes` with both readers; panics unless both fail or both yield the same view.
/// True when they succeeded.
fn agree(bytes: &[u8]) -> bool {
    let ours = BatchView::parse(bytes);
    let theirs = Batch::decode(bytes);
    match (&ours, &theirs) {
        (Ok(v), Ok(b)) => {
            let of = BatchView::of(b);
            assert!(
                same(v, &of),
                "views differ on {bytes:02x?}\nparse: {v:?}\nprost: {of:?}"
            );
            true
        }
        (Err(_), Err(_)) => false,
        _ => panic!("parse and prost disagree on {bytes:02x?}\nparse: {ours:?}\nprost: {theirs:?}"),
    }
}

// ---- a tiny wire writer for hand-built and random encodings ----

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[derive(Default, Clone)]
struct W(Vec<u8>);

impl W {
    fn key(mut self, field: u64, wire_type: u64) -> Self {
        put_varint(&mut self.0, field << 3 | wire_type);
        self
    }
    fn varint(self, field: u64, v: u64) -> Self {
        let mut w = self.key(field, 0);
        put_varint(&mut w.0, v);
        w
    }
    fn bytes(self, field: u64, b: &[u8]) -> Self {
        let mut w = self.key(field, 2);
        put_varint(&mut w.0, b.len() as u64);
        w.0.extend_from_slice(b);
        w
    }
    fn msg(self, field: u64, m: W) -> Self {
        self.bytes(field, &m.0)
    }
    fn fixed64(self, field: u64, v: u64) -> Self {
        let mut w = self.key(field, 1);
        w.0.extend_from_slice(&v.to_le_bytes());
        w
    }
    fn fixed32(self, field: u64, v: u32) -> Self {
        let mut w = self.key(field, 5);
        w.0.extend_from_slice(&v.to_le_bytes());
        w
    }
    fn group(self, field: u64, inner: W) -> Self {
        let mut w = self.key(field, 3);
        w.0.extend_from_slice(&inner.0);
        w.key(field, 4)
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

// ---- random valid batches ----

fn synthetic_batch() -> impl Strategy<Value = Batch> {
    (
        (0..3usize, 0..40usize, 0..30usize, 0..12usize, 0..6usize),
        (0..40usize, 1..16u32, 1..20u64, 1..100u32, 0..50usize),
        ("[a-z0-9-]{0,12}", any::<u64>(), 0..1u64 << 62, any::<u64>()),
    )
        .prop_map(|(a, b, c)| {
            let shape = Shape {
                profiles: a.0,
                functions: a.1,
                stacks: a.2,
                depth: a.3,
                processes: a.4,
                samples_per_profile: b.0,
                cpus: b.1,
                interval_secs: b.2,
                frequency_hz: b.3,
                stack_pool: b.4,
            };
            synthetic::batch(&c.0, c.1, c.2, &shape, c.3)
        })
}

fn double() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        any::<u64>().prop_map(f64::from_bits),
        Just(f64::NAN),
        Just(-0.0),
        Just(f64::INFINITY),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), ".{0,12}"]
}

prop_compose! {
    fn host()(t in prop::collection::vec(text(), 5), cpus: u32, packages: u32) -> Host {
        Host {
            host_id: t[0].clone(),
            hostname: t[1].clone(),
            kernel_release: t[2].clone(),
            cpu_model: t[3].clone(),
            cpus,
            packages,
            agent_version: t[4].clone(),
        }
    }
}

prop_compose! {
    fn frame()(u in any::<[u32; 5]>(), inlined: bool, file_offset: u64, kind: i32) -> Frame {
        Frame {
            function_index: u[0],
            line: u[1],
            inlined,
            build_id_index: u[2],
            file_offset,
            module_index: u[3],
            kind,
        }
    }
}

prop_compose! {
    fn process()(u in any::<[u32; 7]>(), b in prop::collection::vec(any::<u32>(), 0..4))
        -> Process {
        Process {
            pid: u[0],
            comm_index: u[1],
            exe_index: u[2],
            cmdline_index: u[3],
            service_index: u[4],
            container_index: u[5],
            unit_index: u[6],
            build_id_indices: b,
        }
    }
}

prop_compose! {
    fn domain()(kind: i32, package: u32, microjoules in double(), estimated: bool)
        -> EnergyDomain {
        EnergyDomain { kind, package, microjoules, estimated }
    }
}

prop_compose! {
    fn sample()(u in any::<[u32; 3]>(), count: u64, microjoules in double()) -> Sample {
        Sample { stack_index: u[0], process_index: u[1], tid: u[2], count, microjoules }
    }
}

prop_compose! {
    fn profile()(
        u in any::<[u64; 3]>(),
        e in any::<[i32; 2]>(),
        i in any::<[u32; 2]>(),
        j in [double(), double(), double()],
        estimated: bool,
        domains in prop::collection::vec(domain(), 0..3),
        samples in prop::collection::vec(sample(), 0..6),
    ) -> IntervalProfile {
        IntervalProfile {
            start_unix_nanos: u[0],
            duration_nanos: u[1],
            frequency_hz: i[0],
            clock_event: e[0],
            energy_source: e[1],
            energy_model_index: i[1],
            domains,
            interval_microjoules: j[0],
            idle_microjoules: j[1],
            attributed_microjoules: j[2],
            estimated,
            dropped_samples: u[2],
            samples,
        }
    }
}

prop_compose! {
    fn random_batch()(
        ids in [text(), text()],
        sequence: u64,
        created_unix_nanos: u64,
        host in prop::option::of(host()),
        strings in prop::collection::vec(text(), 0..6),
        functions in prop::collection::vec(any::<[u32; 2]>(), 0..4),
        frames in prop::collection::vec(frame(), 0..4),
        stacks in prop::collection::vec(prop::collection::vec(any::<u32>(), 0..5), 0..5),
        processes in prop::collection::vec(process(), 0..3),
        profiles in prop::collection::vec(profile(), 0..3),
        losses in prop::option::of(any::<[u64; 3]>()),
    ) -> Batch {
        Batch {
            host_id: ids[0].clone(),
            sequence,
            host,
            created_unix_nanos,
            strings,
            functions: functions
                .into_iter()
                .map(|f| Function { name_index: f[0], file_index: f[1] })
                .collect(),
            frames,
            stacks: stacks.into_iter().map(|frame_indices| Stack { frame_indices }).collect(),
            processes,
            profiles,
            losses: losses.map(|l| AgentLosses {
                spool_dropped_batches: l[0],
                spool_dropped_intervals: l[1],
                spool_dropped_samples: l[2],
            }),
            agent_instance: ids[1].clone(),
        }
    }
}

fn any_batch() -> impl Strategy<Value = Batch> {
    prop_oneof![synthetic_batch(), random_batch()]
}

// ---- random wire tokens, to reach every field with odd encodings ----

#[derive(Debug, Clone)]
enum Tok {
    Varint(u64, u64),
    Fixed64(u64, u64),
    Fixed32(u64, u32),
    Bytes(u64, Vec<u8>),
    Msg(u64, Vec<Tok>),
    Group(u64, Vec<Tok>),
    Raw(Vec<u8>),
}

fn field_number() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 1..14u64, 1 => Just(0u64), 1 => 14..40u64, 1 => Just((1 << 29) - 1)]
}

fn varint_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..4u64,
        0..300u64,
        any::<u64>(),
        Just(u64::from(u32::MAX) + 2)
    ]
}

/// Up to `max` random tokens (fewer make each odd one likelier to be the only one).
fn tokens(max: usize) -> impl Strategy<Value = Vec<Tok>> {
    let leaf = prop_oneof![
        6 => (field_number(), varint_value()).prop_map(|(f, v)| Tok::Varint(f, v)),
        2 => (field_number(), any::<u64>()).prop_map(|(f, v)| Tok::Fixed64(f, v)),
        1 => (field_number(), any::<u32>()).prop_map(|(f, v)| Tok::Fixed32(f, v)),
        2 => (field_number(), prop_oneof![
                prop::collection::vec(any::<u8>(), 0..6),
                "[a-z]{0,5}".prop_map(String::into_bytes),
            ]).prop_map(|(f, b)| Tok::Bytes(f, b)),
        1 => prop::collection::vec(any::<u8>(), 1..3).prop_map(Tok::Raw),
    ];
    let tok = leaf.prop_recursive(3, 64, 8, |inner| {
        prop_oneof![
            4 => (field_number(), prop::collection::vec(inner.clone(), 0..8))
                .prop_map(|(f, t)| Tok::Msg(f, t)),
            1 => (field_number(), prop::collection::vec(inner, 0..3))
                .prop_map(|(f, t)| Tok::Group(f, t)),
        ]
    });
    prop::collection::vec(tok, 0..max)
}

fn encode(toks: &[Tok]) -> W {
    toks.iter().fold(W::default(), |w, t| match t {
        Tok::Varint(f, v) => w.varint(*f, *v),
        Tok::Fixed64(f, v) => w.fixed64(*f, *v),
        Tok::Fixed32(f, v) => w.fixed32(*f, *v),
        Tok::Bytes(f, b) => w.bytes(*f, b),
        Tok::Msg(f, t) => w.msg(*f, encode(t)),
        Tok::Group(f, t) => w.group(*f, encode(t)),
        Tok::Raw(b) => w.raw(b),
    })
}

// ---- corruption ----

#[derive(Debug, Clone)]
enum Damage {
    Truncate(prop::sample::Index),
    Xor(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Delete(prop::sample::Index, usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    use prop::sample::Index;
    prop_oneof![
        any::<Index>().prop_map(Damage::Truncate),
        (any::<Index>(), 1..=255u8).prop_map(|(i, x)| Damage::Xor(i, x)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..4))
            .prop_map(|(i, b)| Damage::Insert(i, b)),
        (any::<Index>(), 1..8usize).prop_map(|(i, n)| Damage::Delete(i, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, d: &Damage) {
    if bytes.is_empty() {
        return;
    }
    match d {
        Damage::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Damage::Xor(i, x) => {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        Damage::Insert(i, b) => {
            let i = i.index(bytes.len() + 1);
            bytes.splice(i..i, b.iter().copied());
        }
        Damage::Delete(i, n) => {
            let i = i.index(bytes.len());
            bytes.drain(i..(i + n).min(bytes.len()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_batches_parse_as_prost_decodes_them(b in any_batch()) {
        let bytes = b.encode_to_vec();
        let v = BatchView::parse(&bytes).expect("a valid batch parses");
        let decoded = Batch::decode(&bytes[..]).unwrap();
        prop_assert!(same(&v, &BatchView::of(&decoded)), "{v:?}");
        // (Not compared with `b` itself: prost does not encode a double of -0.0.)
        prop_assert!(agree(&bytes));
    }

    #[test]
    fn damaged_batches_fail_exactly_when_prost_fails(
        b in any_batch(),
        damages in prop::collection::vec(damage(), 1..4),
    ) {
        let mut bytes = b.encode_to_vec();
        for d in &damages {
            apply(&mut bytes, d);
        }
        agree(&bytes);
    }

    #[test]
    fn arbitrary_bytes_fail_exactly_when_prost_fails(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        agree(&bytes);
    }

    #[test]
    fn random_wire_tokens_read_as_prost_reads_them(toks in tokens(12)) {
        agree(&encode(&toks).0);
    }

    #[test]
    fn random_submessages_read_as_prost_reads_them(
        path in prop::sample::select(vec![
            &[3][..], &[6], &[7], &[8], &[9], &[10], &[11], &[10, 7], &[10, 13],
        ]),
        toks in prop::collection::vec(tokens(4), 1..4),
    ) {
        // Each token list a submessage at `path` (e.g. a sample of a profile), so that
        // their scalars, repeated and unknown fields meet the nested readers.
        let mut w = W::default();
        for t in &toks {
            let inner = path.iter().rev().fold(encode(t), |m, &f| W::default().msg(f, m));
            w = w.raw(&inner.0);
        }
        agree(&w.0);
    }

    #[test]
    fn request_batch_reads_requests_as_prost_does(
        toks in tokens(6),
        parts in prop::collection::vec((any_batch(), any::<bool>()), 0..3),
    ) {
        // Batches (as field 1, or as opaque bytes in field 2) interleaved with random tokens.
        let mut w = encode(&toks);
        for (b, as_bytes) in &parts {
            w = w.bytes(if *as_bytes { 2 } else { 1 }, &b.encode_to_vec()).raw(&encode(&toks).0);
        }
        let request = Bytes::from(w.0);
        let ours = BatchView::request_batch(&request);
        let theirs = IngestRequest::decode(request.clone()).map(|r| r.payload);
        match (&ours, &theirs) {
            (Ok(None), Ok(None)) => {}
            (Ok(Some(RequestBatch::Encoded(bytes))), Ok(Some(Payload::Batch(b)))) => {
                let v = BatchView::parse(bytes).expect("prost decoded it");
                prop_assert!(same(&v, &BatchView::of(b)));
            }
            (Ok(Some(RequestBatch::Zstd(ours))), Ok(Some(Payload::BatchZstd(theirs)))) => {
                prop_assert_eq!(&ours[..], &theirs[..]);
            }
            (Ok(Some(RequestBatch::Encoded(bytes))), Err(_)) => {
                prop_assert!(BatchView::parse(bytes).is_err())
            }
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "disagree: {ours:?} vs {theirs:?}"),
        }
    }
}

// ---- hand-built encodings ----

fn parse_err(bytes: &[u8]) -> String {
    assert!(!agree(bytes), "expected an error for {bytes:02x?}");
    BatchView::parse(bytes).unwrap_err().to_string()
}

#[test]
fn unpacked_and_split_packed_frame_indices_append_in_order() {
    let packed = |vals: &[u64]| {
        let mut b = Vec::new();
        vals.iter().for_each(|&v| put_varint(&mut b, v));
        b
    };
    let stack = W::default()
        .varint(1, 7)
        .bytes(1, &packed(&[1, 300, 2]))
        .varint(1, 70_000)
        .bytes(1, &packed(&[]))
        .bytes(1, &packed(&[5, 1 << 40]));
    let bytes = W::default()
        .msg(8, W::default().varint(1, 9))
        .msg(8, stack)
        .msg(8, W::default())
        .msg(
            9,
            W::default()
                .varint(8, 4)
                .varint(1, 77)
                .bytes(8, &packed(&[5, 6])),
        )
        .0;
    assert!(agree(&bytes));
    let v = BatchView::parse(&bytes).unwrap();
    assert_eq!(v.stack(0), [9]);
    assert_eq!(v.stack(1), [7, 1, 300, 2, 70_000, 5, 0]);
    assert!(v.stack(2).is_empty());
    assert_eq!(v.build_ids(&v.processes[0]), [4, 5, 6]);
    assert_eq!(v.processes[0].pid, 77);
}

#[test]
fn a_repeated_scalar_field_keeps_its_last_value() {
    let bytes = W::default()
        .varint(2, 5)
        .bytes(1, b"first")
        .varint(2, 6)
        .bytes(1, b"second")
        .msg(
            10,
            W::default()
                .varint(3, 19)
                .fixed64(8, 1)
                .varint(3, u64::MAX)
                .fixed64(8, 2),
        )
        .0;
    assert!(agree(&bytes));
    let v = BatchView::parse(&bytes).unwrap();
    assert_eq!((v.sequence, v.host_id), (6, "second"));
    assert_eq!(v.profiles[0].frequency_hz, u32::MAX);
    assert_eq!(v.profiles[0].interval_microjoules.to_bits(), 2);
}

#[test]
fn scalars_convert_as_prost_converts_them() {
    let big = u64::MAX - 5;
    let frame = W::default()
        .varint(3, 2)
        .varint(1, big)
        .varint(7, big)
        .varint(5, big);
    let bytes = W::default()
        .msg(7, frame)
        .msg(7, W::default().varint(3, 1 << 40))
        .msg(7, W::default().varint(3, 1).varint(3, 0))
        .0;
    assert!(agree(&bytes));
    let v = BatchView::parse(&bytes).unwrap();
    let f = v.frames[0];
    assert!(f.inlined && v.frames[1].inlined && !v.frames[2].inlined);
    assert_eq!(
        (f.function_index, f.kind, f.file_offset),
        (big as u32, big as i32, big)
    );
}

#[test]
fn a_repeated_host_or_losses_merges() {
    let bytes = W::default()
        .msg(
            3,
            W::default().bytes(1, b"id").bytes(2, b"old").varint(5, 8),
        )
        .msg(11, W::default().varint(1, 3).varint(2, 4))
        .msg(3, W::default().bytes(2, b"new").varint(6, 2))
        .msg(11, W::default().varint(2, 5))
        .0;
    assert!(agree(&bytes));
    let v = BatchView::parse(&bytes).unwrap();
    let h = v.host.unwrap();
    assert_eq!(
        (h.host_id, h.hostname, h.cpus, h.packages),
        ("id", "new", 8, 2)
    );
    let l = v.losses.unwrap();
    assert_eq!((l.spool_dropped_batches, l.spool_dropped_intervals), (3, 5));

    let empty = W::default().msg(3, W::default()).0;
    assert_eq!(
        BatchView::parse(&empty).unwrap().host,
        Some(Default::default())
    );
    assert!(agree(&empty));
}

#[test]
fn unknown_fields_of_every_wire_type_are_skipped() {
    let unknown = |w: W| {
        w.varint(99, u64::MAX)
            .fixed64(100, 1)
            .bytes(101, b"\xff\xfe not utf-8")
            .fixed32(102, 7)
            .group(
                103,
                W::default()
                    .varint(1, 1)
                    .group(2, W::default().fixed32(3, 0)),
            )
            .group(104, W::default())
    };
    let sample = unknown(W::default().varint(4, 11)).varint(1, 2);
    let bytes = unknown(W::default())
        .varint(2, 42)
        .msg(
            10,
            unknown(W::default())
                .msg(13, sample)
                .msg(7, unknown(W::default())),
        )
        .msg(3, unknown(W::default()).varint(5, 4))
        .0;
    assert!(agree(&bytes));
    let v = BatchView::parse(&bytes).unwrap();
    assert_eq!(v.sequence, 42);
    let s = v.samples(&v.profiles[0])[0];
    assert_eq!((s.count, s.stack_index), (11, 2));
    assert_eq!(v.domains(&v.profiles[0]).len(), 1);
}

#[test]
fn groups_nest_up_to_prosts_recursion_limit() {
    let nest =
        |depth: usize| (0..depth).fold(W::default(), |inner, _| W::default().group(50, inner));
    // Batch's own fields have 100 levels, a sample's 98.
    for depth in 96..=102 {
        let top = nest(depth).0;
        assert_eq!(agree(&top), depth <= 100, "depth {depth} in Batch");
        let in_sample = W::default().msg(10, W::default().msg(13, nest(depth))).0;
        assert_eq!(agree(&in_sample), depth <= 98, "depth {depth} in a sample");
    }
}

#[test]
fn malformed_keys_and_wire_types_are_errors() {
    // Field number 0, wire types 6 and 7, a stray end-group, a mismatched end-group.
    for bytes in [
        W::default().varint(0, 1).0,
        W::default().key(5, 6).0,
        W::default().key(200, 7).raw(&[0]).0,
        W::default().key(50, 4).0,
        W::default().key(50, 3).key(51, 4).0,
        // A key over 32 bits (then a value, so only the key is wrong).
        W::default().raw(&[0x80, 0x80, 0x80, 0x80, 0x10, 0x00]).0,
    ] {
        parse_err(&bytes);
    }
    // A known field with the wrong wire type, at the top and nested.
    let m = parse_err(&W::default().fixed64(2, 1).0);
    assert!(m.starts_with("Batch.sequence: "), "{m}");
    let m = parse_err(
        &W::default()
            .msg(10, W::default().msg(13, W::default().bytes(4, b"")))
            .0,
    );
    assert_eq!(
        m,
        "Batch.profiles[0].samples[0].count: unexpected wire type 2"
    );
    parse_err(&W::default().msg(8, W::default().fixed32(1, 1)).0);
    parse_err(&W::default().varint(3, 1).0);
}

#[test]
fn varints_follow_prosts_limits() {
    let with = |v: &[u8]| W::default().key(2, 0).raw(v).0;
    // Ten bytes whose last holds bit 63: u64::MAX.
    let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert!(agree(&with(&max)));
    assert_eq!(BatchView::parse(&with(&max)).unwrap().sequence, u64::MAX);
    // Overlong but in range: fine.
    assert!(agree(&with(&[0x85, 0x80, 0x00])));
    // Truncated, at the end of the input and of a submessage.
    parse_err(&with(&max[..9]));
    parse_err(
        &W::default()
            .msg(10, W::default().key(1, 0).raw(&max[..9]))
            .0,
    );
    // A tenth byte over 1, an eleventh byte.
    for bad in [
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..],
        &[
            0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
        ][..],
    ] {
        parse_err(&with(bad));
        // Also at the end of a submessage, and with bytes after it.
        parse_err(&W::default().msg(10, W::default().key(1, 0).raw(bad)).0);
        let mut longer = with(bad);
        longer.extend_from_slice(&[0; 12]);
        parse_err(&longer);
    }
}

#[test]
fn lengths_beyond_the_input_are_errors() {
    let m = parse_err(&W::default().key(5, 2).raw(&[5, b'a', b'b']).0);
    assert!(m.starts_with("Batch.strings[0]: "), "{m}");
    // A submessage whose field runs past its end, though not past the input.
    let m = parse_err(
        &W::default()
            .msg(7, W::default().key(5, 0).raw(&[0x80]))
            .raw(&[0x01])
            .0,
    );
    assert!(m.starts_with("Batch.frames[0].file_offset: "), "{m}");
    parse_err(
        &W::default()
            .key(10, 2)
            .raw(&[0xff, 0xff, 0xff, 0xff, 0x0f])
            .0,
    );
    parse_err(&W::default().fixed64(20, 0).0[..5]);
}

#[test]
fn invalid_utf8_is_an_error_naming_the_field() {
    let bytes = W::default()
        .bytes(5, b"")
        .bytes(5, b"ok")
        .bytes(5, b"caf\xc3")
        .0;
    let m = parse_err(&bytes);
    assert!(m.contains("Batch.strings") && m.contains("UTF-8"), "{m}");
    assert!(m.starts_with("Batch.strings[2]: "), "{m}");

    let m = parse_err(&W::default().msg(3, W::default().bytes(2, b"\xff")).0);
    assert!(
        m.starts_with("Batch.host.hostname: ") && m.contains("UTF-8"),
        "{m}"
    );
}

// ---- request_batch ----

#[test]
fn request_batch_returns_a_slice_of_a_single_occurrence() {
    let b = synthetic::batch("h", 1, 1 << 60, &Shape::default(), 1).encode_to_vec();
    let request = Bytes::from(IngestRequest::plain(Batch::decode(&b[..]).unwrap()).encode_to_vec());
    let Some(RequestBatch::Encoded(got)) = BatchView::request_batch(&request).unwrap() else {
        panic!("no batch");
    };
    assert_eq!(got, b);
    let range = request.as_ptr_range();
    assert!(range.contains(&got.as_ptr()) && got.as_ptr_range().end <= range.end);
}

#[test]
fn request_batch_joins_repeated_occurrences() {
    let one = W::default()
        .varint(2, 7)
        .msg(3, W::default().bytes(2, b"a").varint(5, 1));
    let two = W::default()
        .msg(3, W::default().bytes(1, b"id"))
        .bytes(5, b"s");
    let request = Bytes::from(
        W::default()
            .msg(1, one.clone())
            .varint(9, 1)
            .group(10, W::default())
            .msg(1, two.clone())
            .0,
    );
    let Some(RequestBatch::Encoded(got)) = BatchView::request_batch(&request).unwrap() else {
        panic!("no batch");
    };
    assert_eq!(got, [one.0, two.0].concat());
    let Some(Payload::Batch(theirs)) = IngestRequest::decode(request.clone()).unwrap().payload
    else {
        panic!("prost: no batch");
    };
    assert!(same(
        &BatchView::parse(&got).unwrap(),
        &BatchView::of(&theirs)
    ));
    assert_eq!(BatchView::parse(&got).unwrap().host.unwrap().hostname, "a");
}

#[test]
fn request_payload_is_the_last_of_batch_and_batch_zstd() {
    // A oneof: the last field set wins, and a `batch` after `batch_zstd` starts afresh.
    let one = W::default().varint(2, 7);
    let two = W::default().varint(2, 9);
    let cases = [
        (
            W::default().msg(1, one.clone()).bytes(2, b"z"),
            RequestBatch::Zstd(Bytes::from_static(b"z")),
        ),
        (
            W::default().bytes(2, b"z").msg(1, one.clone()),
            RequestBatch::Encoded(Bytes::from(one.0.clone())),
        ),
        (
            W::default()
                .msg(1, two.clone())
                .bytes(2, b"z")
                .msg(1, one.clone())
                .msg(1, two.clone()),
            RequestBatch::Encoded(Bytes::from([one.0.clone(), two.0.clone()].concat())),
        ),
        (
            W::default().bytes(2, b"y").bytes(2, b"z"),
            RequestBatch::Zstd(Bytes::from_static(b"z")),
        ),
    ];
    for (w, want) in cases {
        let request = Bytes::from(w.0);
        let got = BatchView::request_batch(&request).unwrap().unwrap();
        assert_eq!(got, want);
        match (
            got,
            IngestRequest::decode(request).unwrap().payload.unwrap(),
        ) {
            (RequestBatch::Zstd(z), Payload::BatchZstd(t)) => assert_eq!(z, t),
            (RequestBatch::Encoded(e), Payload::Batch(t)) => {
                assert!(same(&BatchView::parse(&e).unwrap(), &BatchView::of(&t)))
            }
            (g, t) => panic!("disagree: {g:?} vs {t:?}"),
        }
    }
}

#[test]
fn request_batch_without_a_batch_is_none() {
    assert_eq!(BatchView::request_batch(&Bytes::new()).unwrap(), None);
    let unknown = Bytes::from(W::default().varint(3, 1).bytes(4, b"x").fixed32(5, 0).0);
    assert_eq!(BatchView::request_batch(&unknown).unwrap(), None);
}

#[test]
fn request_batch_rejects_a_mistyped_or_truncated_field() {
    for bytes in [
        W::default().varint(1, 3).0,
        W::default().fixed64(1, 3).0,
        W::default().key(1, 2).raw(&[4, 0]).0,
        W::default().key(0, 2).raw(&[0]).0,
        W::default().varint(2, 3).0,
    ] {
        let bytes = Bytes::from(bytes);
        assert!(IngestRequest::decode(bytes.clone()).is_err());
        let e = BatchView::request_batch(&bytes).unwrap_err();
        assert!(e.path.starts_with("IngestRequest"), "{e}");
    }
}

// ---- speed ----

/// Calls per second of `f` over about `phase`.
fn rate(phase: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < phase {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[test]
#[ignore = "a benchmark: cargo test --release -p wattson-proto --test view -- --ignored --nocapture"]
fn parse_is_faster_than_prost_decode() {
    let shape = Shape {
        stack_pool: 3000,
        ..Shape::default()
    };
    let template = synthetic::batch("bench-host", 1, 1_750_000_000_000_000_000, &shape, 1);
    let bytes = template.encode_to_vec();
    // Alternating rounds, best of each: the machine may be busy with other work.
    let (mut ours, mut prost) = (0f64, 0f64);
    for _ in 0..6 {
        let phase = Duration::from_millis(400);
        ours = ours.max(rate(phase, || {
            std::hint::black_box(BatchView::parse(std::hint::black_box(&bytes)).unwrap());
        }));
        prost = prost.max(rate(phase, || {
            std::hint::black_box(Batch::decode(std::hint::black_box(&bytes[..])).unwrap());
        }));
    }
    let mb = bytes.len() as f64 / 1e6;
    println!(
        "batch: {} B, {} strings, {} stacks, {} samples",
        bytes.len(),
        template.strings.len(),
        template.stacks.len(),
        synthetic::sample_count(&template)
    );
    println!(
        "BatchView::parse: {ours:>9.0} batches/s ({:.0} MB/s)",
        ours * mb
    );
    println!(
        "Batch::decode:    {prost:>9.0} batches/s ({:.0} MB/s)",
        prost * mb
    );
    println!("speedup: {:.2}x", ours / prost);
}

#[test]
fn a_batch_in_a_request_has_one_group_level_less_in_prost() {
    // The one known difference, documented on `request_batch`: prost reads the fields of a
    // batch inside a request one level deeper, so 100 nested unknown groups fail there.
    let nest =
        |depth: usize| (0..depth).fold(W::default(), |inner, _| W::default().group(50, inner));
    for depth in [99, 100] {
        let batch = nest(depth).0;
        let request = Bytes::from(W::default().bytes(1, &batch).0);
        let Some(RequestBatch::Encoded(got)) = BatchView::request_batch(&request).unwrap() else {
            panic!("no batch");
        };
        assert!(BatchView::parse(&got).is_ok() && Batch::decode(&batch[..]).is_ok());
        assert_eq!(IngestRequest::decode(request).is_ok(), depth == 99);
    }
}

/// Regression (found by `request_batch_reads_requests_as_prost_does`): prost reads each
/// `batch` of a request on its own. Joined, the first one's last varint, cut short, was
/// completed by the second one's bytes, so the collector read a request that prost refuses.
#[test]
fn a_batch_cut_short_fails_the_request_though_the_next_completes_it() {
    let cut = [0xe8, 0x00, 0x00, 0xad, 0x80];
    let mut next = vec![0x09];
    next.extend_from_slice(&6257323478286860288u64.to_le_bytes());
    next.extend_from_slice(&[0, 0]);
    let mut request = vec![0x0a, cut.len() as u8];
    request.extend_from_slice(&cut);
    request.extend_from_slice(&[0x0a, next.len() as u8]);
    request.extend_from_slice(&next);
    let joined: Vec<u8> = cut.iter().chain(&next).copied().collect();
    assert!(
        BatchView::parse(&joined).is_ok(),
        "joined, the two read well"
    );
    let request = Bytes::from(request);
    assert!(IngestRequest::decode(request.clone()).is_err());
    assert!(BatchView::request_batch(&request).is_err());
}
