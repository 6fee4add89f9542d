//! The saved corpus, replayed through the harnesses without libFuzzer (on
//! a stable toolchain): the files are what `examples/seeds.rs` writes, and
//! each seed reaches the device path its name promises, so the fuzzer
//! starts from inputs that get past the parsers.

use std::collections::BTreeMap;
use std::path::Path;

use devices::virtio::block::RequestType;
use devices::virtio::vsock::packet::{OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, TYPE_STREAM};
use devices::virtio::vsock::Header;
use devices_fuzz::vsock::{GUEST_CID, HOST_GREETING};
use devices_fuzz::{block, seeds, vsock, QueueSpec, Reader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

fn seed(target: &str, name: &str) -> Vec<u8> {
    seeds::all()
        .into_iter()
        .find(|s| s.0 == target && s.1 == name)
        .unwrap_or_else(|| panic!("no seed {target}/{name}"))
        .2
}

#[test]
fn corpus_files_match_the_generator() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (target, name, input) in seeds::all() {
        expected.insert(format!("{target}/{name}"), input);
    }
    let mut found: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for target in std::fs::read_dir(&corpus).expect("fuzz/corpus") {
        let target = target.unwrap();
        for file in std::fs::read_dir(target.path()).unwrap() {
            let file = file.unwrap();
            let key = format!(
                "{}/{}",
                target.file_name().to_string_lossy(),
                file.file_name().to_string_lossy()
            );
            found.insert(key, std::fs::read(file.path()).unwrap());
        }
    }
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "regenerate with: cargo run --manifest-path fuzz/Cargo.toml --example seeds"
    );
    for (key, bytes) in &expected {
        assert_eq!(&found[key], bytes, "{key} is stale: regenerate the corpus");
    }
    let total: usize = found.values().map(Vec::len).sum();
    assert!(total < 200 * 1024, "corpus is {total} bytes");
}

/// The status byte of the chain with head `head` (consecutive descriptors).
fn status(mem: &GuestMemoryMmap, spec: &QueueSpec, head: u32) -> u8 {
    let mut i = head as usize;
    while spec.descs[i].flags & devices_fuzz::F_NEXT != 0 {
        i = usize::from(spec.descs[i].next);
    }
    let last = spec.descs[i];
    mem.read_obj(GuestAddress(last.addr + u64::from(last.len) - 1))
        .unwrap()
}

fn block_spec(input: &[u8]) -> QueueSpec {
    let mut r = Reader::new(input);
    r.u8();
    QueueSpec::parse(&mut r)
}

const OK: u8 = 0;
const IOERR: u8 = 1;
const UNSUPP: u8 = 2;

/// (name, used lengths, statuses) for the `block` seeds.
#[test]
fn block_seeds_complete_as_expected() {
    let cases: &[(&str, &[u32], &[u8])] = &[
        ("read", &[1537], &[OK]),
        ("write", &[1], &[OK]),
        ("write_read_only", &[1], &[IOERR]),
        ("write_through", &[1], &[OK]),
        ("flush", &[1], &[OK]),
        ("get_id", &[21], &[OK]),
        (
            "mixed",
            &[4097, 1, 1, 21, 1, 1],
            &[OK, OK, OK, OK, UNSUPP, IOERR],
        ),
        ("any_layout", &[1, 513], &[OK, OK]),
        ("wrap_event_idx", &[513, 1, 21], &[OK, OK, OK]),
    ];
    for &(name, lens, statuses) in cases {
        let input = seed("block", name);
        let spec = block_spec(&input);
        let out = block::run_device(&input);
        assert_eq!(out.result, Ok(()), "{name}");
        let got_lens: Vec<u32> = out.used.iter().map(|u| u.1).collect();
        assert_eq!(got_lens, lens, "{name}: used lengths");
        let got_statuses: Vec<u8> = out
            .used
            .iter()
            .map(|u| status(&out.mem, &spec, u.0))
            .collect();
        assert_eq!(got_statuses, statuses, "{name}: statuses");
        if name == "get_id" {
            let id_buf = spec.descs[1].addr;
            let mut id = [0u8; 20];
            out.mem.read_slice(&mut id, GuestAddress(id_buf)).unwrap();
            assert_eq!(&id[..block::SERIAL.len()], block::SERIAL.as_bytes());
        }
        if name == "read" {
            // Sectors 1 and 2 (no seed writes them) of the pattern image.
            let mut data = vec![0u8; 1024];
            out.mem
                .read_slice(&mut data, GuestAddress(spec.descs[1].addr))
                .unwrap();
            let expected: Vec<u8> = (512..1536).map(|i| (i % 251) as u8).collect();
            assert_eq!(data, expected);
        }
    }
}

#[test]
fn block_request_seeds_parse() {
    let cases: &[(&str, &[Option<RequestType>])] = &[
        ("read", &[Some(RequestType::In)]),
        ("write", &[Some(RequestType::Out)]),
        ("flush", &[Some(RequestType::Flush)]),
        ("get_id", &[Some(RequestType::GetId)]),
        (
            "mixed",
            &[
                Some(RequestType::In),
                Some(RequestType::Out),
                Some(RequestType::Flush),
                Some(RequestType::GetId),
                Some(RequestType::Unsupported(11)),
                None,
            ],
        ),
        (
            "any_layout",
            &[Some(RequestType::Out), Some(RequestType::In)],
        ),
        (
            "wrap_event_idx",
            &[
                Some(RequestType::In),
                Some(RequestType::Flush),
                Some(RequestType::GetId),
            ],
        ),
    ];
    for &(name, types) in cases {
        let out = block::run_request(&seed("block_request", name));
        let got: Vec<Option<RequestType>> = out
            .iter()
            .map(|r| r.as_ref().ok().map(|r| r.request_type))
            .collect();
        assert_eq!(got, types, "{name}: {out:?}");
    }
}

fn vsock_specs(input: &[u8]) -> (QueueSpec, QueueSpec) {
    let mut r = Reader::new(input);
    r.u8();
    r.u32();
    let tx = QueueSpec::parse(&mut r);
    let rx = QueueSpec::parse(&mut r);
    (tx, rx)
}

/// The packets the device put in the RX buffers: (op, payload).
fn rx_packets(out: &vsock::DeviceOutcome, rx: &QueueSpec) -> Vec<(u16, Vec<u8>)> {
    out.rx_used
        .iter()
        .map(|&(id, len)| {
            let desc = rx.descs[id as usize];
            let mut raw = [0u8; 44];
            out.mem
                .read_slice(&mut raw, GuestAddress(desc.addr))
                .unwrap();
            let h = Header::from_bytes(&raw);
            assert_eq!((h.src_cid, h.dst_cid, h.type_), (2, GUEST_CID, TYPE_STREAM));
            assert_eq!(len, 44 + h.len);
            // Payload: right after the header, or in the next descriptor.
            let mut data = vec![0u8; h.len as usize];
            let at = if desc.len > 44 {
                desc.addr + 44
            } else {
                rx.descs[usize::from(desc.next)].addr
            };
            out.mem.read_slice(&mut data, GuestAddress(at)).unwrap();
            (h.op, data)
        })
        .collect()
}

#[test]
fn vsock_seeds_talk_to_the_host() {
    let input = seed("vsock", "request");
    let (_, rx) = vsock_specs(&input);
    let out = vsock::run_device(&input);
    assert!(!out.failed);
    assert_eq!((out.host_accepted, out.connections), (1, 1));
    assert_eq!(out.tx_used.len(), 1);
    assert_eq!(
        rx_packets(&out, &rx),
        vec![(OP_RESPONSE, vec![]), (OP_RW, HOST_GREETING.to_vec())]
    );

    let input = seed("vsock", "rw_credit_shutdown");
    let (_, rx) = vsock_specs(&input);
    let out = vsock::run_device(&input);
    assert!(!out.failed);
    assert_eq!(out.tx_used.len(), 6);
    assert_eq!(out.host_accepted, 1);
    assert_eq!(out.host_received, b"ping\nagain\n");
    // The RESPONSE carries the credit the CREDIT_REQUEST asked for.
    assert_eq!(
        rx_packets(&out, &rx),
        vec![(OP_RESPONSE, vec![]), (OP_RW, HOST_GREETING.to_vec())]
    );

    let input = seed("vsock", "resets");
    let (_, rx) = vsock_specs(&input);
    let out = vsock::run_device(&input);
    assert!(!out.failed);
    assert_eq!(out.tx_used.len(), 4);
    assert_eq!((out.host_accepted, out.connections), (0, 0));
    assert_eq!(
        rx_packets(&out, &rx),
        vec![(OP_RST, vec![]), (OP_RST, vec![]), (OP_RST, vec![])]
    );

    let input = seed("vsock", "host_connect");
    let (_, rx) = vsock_specs(&input);
    let out = vsock::run_device(&input);
    assert!(!out.failed);
    assert_eq!(out.connections, 1);
    assert_eq!(
        rx_packets(&out, &rx),
        vec![(OP_REQUEST, vec![]), (OP_RW, HOST_GREETING.to_vec())]
    );
}

#[test]
fn vsock_packet_seeds_parse() {
    let out = vsock::run_packet(&seed("vsock_packet", "tx"));
    let data: Vec<Vec<u8>> = out
        .iter()
        .map(|o| o.tx.as_ref().expect("a TX packet").data.clone())
        .collect();
    assert_eq!(data, vec![b"hello".to_vec(), b"hello".to_vec(), vec![]]);
    assert!(out.iter().all(|o| o.rx.is_err()));

    let out = vsock::run_packet(&seed("vsock_packet", "rx"));
    let rx: Vec<(usize, u32)> = out.iter().map(|o| *o.rx.as_ref().unwrap()).collect();
    assert_eq!(rx, vec![(4096, 144), (4096, 144)]);
    assert!(out.iter().all(|o| o.tx.is_err()));

    let out = vsock::run_packet(&seed("vsock_packet", "oversize"));
    assert_eq!(out.len(), 1);
    let err = out[0].tx.as_ref().unwrap_err();
    assert!(err.contains("65537"), "{err}");
}
