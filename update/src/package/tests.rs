//! Pinned bytes and decoding rules of the package header and manifest.

use super::*;

fn sample_header() -> PackageHeader {
    PackageHeader {
        major: 1,
        minor: 0,
        incompat: 0,
        compat: 0,
        file_size: 1000,
        manifest_offset: 512,
        manifest_stored: 88,
        manifest_len: 5000,
        data_offset: 600,
        data_len: 400,
        manifest_hash: [1; 32],
        base_id: [2; 32],
        target_id: [3; 32],
        signer: [4; 32],
        signature: [5; 64],
    }
}

#[test]
fn header_bytes_are_pinned() {
    let b = sample_header().encode();
    let mut want = Vec::new();
    want.extend_from_slice(b"MOSAICUP");
    want.extend_from_slice(&[1, 0, 0, 0]); // 1.0
    want.extend_from_slice(&[0x00, 0x02, 0, 0]); // 512
    want.extend_from_slice(&[0; 16]); // features
    want.extend_from_slice(&[0xe8, 0x03, 0, 0, 0, 0, 0, 0]); // 1000
    want.extend_from_slice(&[0x00, 0x02, 0, 0, 0, 0, 0, 0]); // 512
    want.extend_from_slice(&[88, 0, 0, 0, 0, 0, 0, 0]);
    want.extend_from_slice(&[0x88, 0x13, 0, 0, 0, 0, 0, 0]); // 5000
    want.extend_from_slice(&[0x58, 0x02, 0, 0, 0, 0, 0, 0]); // 600
    want.extend_from_slice(&[0x90, 0x01, 0, 0, 0, 0, 0, 0]); // 400
    want.extend_from_slice(&[1; 32]);
    want.extend_from_slice(&[2; 32]);
    want.extend_from_slice(&[3; 32]);
    want.extend_from_slice(&[0; 240]);
    want.extend_from_slice(&[4; 32]);
    want.extend_from_slice(&[5; 64]);
    assert_eq!(b.to_vec(), want);
    let d = PackageHeader::decode(Path::new("p"), &b, 1000).unwrap();
    assert_eq!(d, sample_header());
}

#[test]
fn header_rules() {
    let p = Path::new("p");
    let mut b = sample_header().encode();
    b[10] = 9; // higher minor: fine
    assert_eq!(PackageHeader::decode(p, &b, 1000).unwrap().minor, 9);
    b[8] = 2; // higher major: refused
    assert!(matches!(
        PackageHeader::decode(p, &b, 1000),
        Err(Error::Unsupported { .. })
    ));
    let mut b = sample_header().encode();
    b[16] = 1; // unknown incompatible feature
    assert!(matches!(
        PackageHeader::decode(p, &b, 1000),
        Err(Error::Unsupported { .. })
    ));
    let mut b = sample_header().encode();
    b[24] = 1; // unknown compatible feature: ignored
    assert!(PackageHeader::decode(p, &b, 1000).is_ok());
    let mut b = sample_header().encode();
    b[200] = 1; // reserved
    assert!(matches!(
        PackageHeader::decode(p, &b, 1000),
        Err(Error::Corrupt { .. })
    ));
    let b = sample_header().encode();
    assert!(PackageHeader::decode(p, &b, 999).is_err());
}

fn sample_manifest() -> Manifest {
    let payload = |offset, len| Payload {
        offset,
        len,
        hash: [7; 32],
        frames: vec![Frame {
            prefix_start: 0,
            prefix_len: 0,
            stored_len: len,
        }],
    };
    Manifest {
        frame_size: 1 << 20,
        base_name: "app".into(),
        base_version: "1".into(),
        target_header: Box::new([9; FRAG_HEADER]),
        metadata: Piece {
            inode: 0,
            kind: PieceKind::Full,
            path: Vec::new(),
            size: 300,
            base: None,
            out_hash: [8; 32],
            payload: Some(payload(0, 50)),
        },
        stats: Stats {
            changed: 1,
            renamed: 1,
            ..Default::default()
        },
        pieces: vec![
            Piece {
                inode: 3,
                kind: PieceKind::Copy,
                path: b"/a".to_vec(),
                size: 10,
                base: Some(BaseRef {
                    inode: 4,
                    hash: [6; 32],
                }),
                out_hash: [6; 32],
                payload: None,
            },
            Piece {
                inode: 5,
                kind: PieceKind::Delta,
                path: b"/b".to_vec(),
                size: 10,
                base: Some(BaseRef {
                    inode: 5,
                    hash: [5; 32],
                }),
                out_hash: [4; 32],
                payload: Some(Payload {
                    frames: vec![Frame {
                        prefix_start: 0,
                        prefix_len: 9,
                        stored_len: 20,
                    }],
                    ..payload(50, 20)
                }),
            },
        ],
    }
}

#[test]
fn manifest_round_trip_and_rules() {
    let m = sample_manifest();
    let b = m.encode();
    assert_eq!(&b[..8], b"MOSUMAN1");
    assert_eq!(&b[8..11], &[0x80, 0x80, 0x40]); // frame size 1 MiB as a varint
    assert_eq!(Manifest::decode(&b, 70).unwrap(), m);
    // Data section too short for the pieces.
    assert!(Manifest::decode(&b, 69).is_err());
    // Every truncation is an error, never a panic.
    for n in 0..b.len() {
        assert!(Manifest::decode(&b[..n], 70).is_err());
    }
    // Pieces out of order.
    let mut m2 = m.clone();
    m2.pieces.swap(0, 1);
    assert!(Manifest::decode(&m2.encode(), 70).is_err());
}
