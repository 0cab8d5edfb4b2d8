use super::*;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_head(&mut out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

/// Splits `bytes` (after the preface) into `(kind, flags, stream, payload)`.
fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    assert!(bytes.starts_with(PREFACE));
    let mut rest = &bytes[PREFACE.len()..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let h = parse_head(rest);
        out.push((
            h.kind,
            h.flags,
            h.stream,
            rest[HEADER_LEN..HEADER_LEN + h.len].to_vec(),
        ));
        rest = &rest[HEADER_LEN + h.len..];
    }
    out
}

fn value_of(fields: &Fields, name: &str) -> String {
    let (_, v) = fields.iter().find(|(n, _)| n == name.as_bytes()).unwrap();
    String::from_utf8(v.clone()).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A decoder as h2's starts: a 4096-byte table.
fn server() -> Decoder<'static> {
    let mut d = Decoder::new();
    d.set_max_allowed_table_size(TABLE_SIZE);
    d
}

/// What gRPC C-core sends for `unix:///tmp/a.sock`: the path percent-encoded, indexed, then
/// referred to from the dynamic table by the next request.
fn grpc_c_core_connection() -> Vec<u8> {
    let mut first = vec![0x83, 0x86, 0x44, 0x0b];
    first.extend_from_slice(b"/svc/Method");
    first.extend_from_slice(&[0x41, 0x0c]);
    first.extend_from_slice(b"tmp%2Fa.sock");
    let second = vec![0x83, 0x86, 0xbf, 0xbe]; // path and authority from the dynamic table
    let mut input = PREFACE.to_vec();
    input.extend(frame(0x4, 0, 0, &[0, 4, 0, 0, 0x10, 0]));
    input.extend(frame(HEADERS, END_HEADERS, 1, &first));
    input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\x05hello"));
    input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
    input
}

#[test]
fn a_percent_encoded_socket_path_becomes_localhost_on_every_request() {
    let input = grpc_c_core_connection();
    let mut out = Vec::new();
    let events = Inbound::default().feed(&input, &mut out);
    assert_eq!(events.rewritten, 2);
    assert_eq!(events.gave_up, None);
    let got = frames(&out);
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[0],
        (0x4, 0, 0, vec![0, 4, 0, 0, 0x10, 0]),
        "SETTINGS as sent"
    );
    assert_eq!(got[2], (0x0, END_STREAM, 1, b"\0\0\0\0\x05hello".to_vec()));
    let mut server = server();
    assert_eq!(
        got[1].3[0], EMPTY_TABLE,
        "the first block empties h2's table"
    );
    for (i, stream, flags) in [(1, 1, END_HEADERS), (3, 3, END_HEADERS | END_STREAM)] {
        let (kind, f, s, payload) = &got[i];
        assert_eq!((*kind, *f, *s), (HEADERS, flags, stream));
        let fields = server.decode(payload).unwrap();
        assert_eq!(value_of(&fields, ":authority"), "localhost");
        assert_eq!(value_of(&fields, ":path"), "/svc/Method");
        assert_eq!(value_of(&fields, ":method"), "POST");
    }
}

#[test]
fn bytes_arriving_one_at_a_time_give_the_same_stream() {
    let input = grpc_c_core_connection();
    let mut whole = Vec::new();
    Inbound::default().feed(&input, &mut whole);
    let mut inbound = Inbound::default();
    let mut bytewise = Vec::new();
    let mut rewritten = 0;
    for b in &input {
        rewritten += inbound
            .feed(std::slice::from_ref(b), &mut bytewise)
            .rewritten;
    }
    assert_eq!(rewritten, 2);
    assert_eq!(bytewise, whole);
}

#[test]
fn a_good_authority_stays_and_padding_priority_continuation_are_handled() {
    let mut block = vec![0x83, 0x41, 0x09];
    block.extend_from_slice(b"localhost");
    block.extend_from_slice(&[0x40, 0x06]);
    block.extend_from_slice(b"x-long");
    block.extend_from_slice(&[0x7f, 0xe9, 0x06]);
    block.extend(std::iter::repeat_n(b'v', 1000));
    // PADDED | PRIORITY on HEADERS, the block split across a CONTINUATION.
    let mut headers = vec![3, 0, 0, 0, 7, 16];
    headers.extend_from_slice(&block[..10]);
    headers.extend_from_slice(&[0, 0, 0]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, PADDED | PRIORITY, 5, &headers));
    input.extend(frame(CONTINUATION, END_HEADERS, 5, &block[10..]));
    let mut out = Vec::new();
    let events = Inbound::default().feed(&input, &mut out);
    assert_eq!(events, InboundEvents::default());
    let got = frames(&out);
    assert_eq!(got.len(), 1);
    let (kind, flags, stream, payload) = &got[0];
    assert_eq!(
        (*kind, *flags, *stream),
        (HEADERS, PRIORITY | END_HEADERS, 5)
    );
    assert_eq!(payload[..5], [0, 0, 0, 7, 16]);
    let fields = server().decode(&payload[5..]).unwrap();
    assert_eq!(value_of(&fields, ":authority"), "localhost");
    assert_eq!(value_of(&fields, "x-long").len(), 1000);
}

#[test]
/// A block sent as HEADERS + CONTINUATIONs (just under h2's 16 KiB header-list limit) is
/// followed, and written back as frames no larger than the server accepts.
fn a_block_in_several_frames_is_written_back_in_frames_the_server_accepts() {
    let mut block = Vec::new();
    for i in 0..2 {
        block.extend_from_slice(&[0x00, 0x03]);
        block.extend_from_slice(format!("x-{i}").as_bytes());
        block.extend_from_slice(&[0x7f, 0xa5, 0x3e]); // 127 + 37 + 62 * 128 = 8100
        block.extend(std::iter::repeat_n(b'a' + i, 8100));
    }
    let mut input = PREFACE.to_vec();
    let (a, b) = block.split_at(6000);
    let (b, c) = b.split_at(6000);
    input.extend(frame(HEADERS, END_STREAM, 1, a));
    input.extend(frame(CONTINUATION, 0, 1, b));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, c));
    let mut out = Vec::new();
    assert_eq!(Inbound::default().feed(&input, &mut out).gave_up, None);
    let got = frames(&out);
    assert!(!got.is_empty());
    let mut joined = Vec::new();
    for (i, (kind, flags, stream, payload)) in got.iter().enumerate() {
        assert!(payload.len() <= MAX_FRAME);
        assert_eq!(*stream, 1);
        let last = i == got.len() - 1;
        let want_kind = if i == 0 { HEADERS } else { CONTINUATION };
        let mut want_flags = if i == 0 { END_STREAM } else { 0 };
        if last {
            want_flags |= END_HEADERS;
        }
        assert_eq!((*kind, *flags), (want_kind, want_flags), "frame {i}");
        joined.extend_from_slice(payload);
    }
    let fields = server().decode(&joined).unwrap();
    assert_eq!(fields.len(), 2);
    assert_eq!(value_of(&fields, "x-1"), "b".repeat(8100));
}

#[test]
fn what_cannot_be_followed_is_passed_on_unchanged() {
    let mut bad_order = PREFACE.to_vec();
    bad_order.extend(frame(HEADERS, 0, 1, &[0x83]));
    bad_order.extend(frame(0x0, 0, 1, b"data"));
    bad_order.extend(frame(HEADERS, END_HEADERS, 3, &[0x83]));
    let mut bad_hpack = PREFACE.to_vec();
    bad_hpack.extend(frame(HEADERS, END_HEADERS, 1, &[0x83, 0xbe]));
    bad_hpack.extend(frame(0x0, END_STREAM, 1, b"data"));
    let mut orphan = PREFACE.to_vec();
    orphan.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x83]));
    let http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    for (input, why) in [
        (bad_order, "a frame inside a header block"),
        (bad_hpack, "undecodable header block"),
        (orphan, "header frames out of order"),
        (http1, "no HTTP/2 connection preface"),
    ] {
        let mut out = Vec::new();
        let events = Inbound::default().feed(&input, &mut out);
        assert_eq!(events.gave_up, Some(why));
        assert_eq!(out, input, "{why}");
    }
}

#[test]
fn huffman_and_the_dynamic_table_are_followed_and_h2s_table_stays_empty() {
    // RFC 7541 C.4: three requests on one connection, Huffman-coded, the later ones referring
    // to entries the earlier ones added.
    let blocks = [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ];
    let mut input = PREFACE.to_vec();
    for (i, b) in (0u32..).zip(blocks) {
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &hex(b)));
    }
    let mut out = Vec::new();
    assert_eq!(
        Inbound::default().feed(&input, &mut out),
        InboundEvents::default()
    );
    let mut server = server();
    let got: Vec<Fields> = frames(&out)
        .iter()
        .map(|(_, _, _, payload)| server.decode(payload).unwrap())
        .collect();
    assert_eq!(got.len(), 3);
    assert_eq!(value_of(&got[1], ":authority"), "www.example.com");
    assert_eq!(value_of(&got[1], "cache-control"), "no-cache");
    assert_eq!(value_of(&got[2], ":path"), "/index.html");
    assert_eq!(value_of(&got[2], "custom-key"), "custom-value");
    assert_eq!(
        server.decode(&[0xbe]),
        Err(DecoderError::HeaderIndexOutOfBounds),
        "h2's table holds nothing"
    );
}

#[test]
fn bounds_on_the_table_and_the_list_pass_the_connection_on_unchanged() {
    // A table size update above the 4096 bytes the server allows.
    let mut big_table = PREFACE.to_vec();
    big_table.extend(frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe2, 0x1f, 0x83]));
    // One 1000-byte entry referred to 100 times: a small block, a 100 KB list.
    let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xe9, 0x06];
    block.extend(std::iter::repeat_n(b'v', 1000));
    block.extend(std::iter::repeat_n(0xbe, 100));
    let mut inflated = PREFACE.to_vec();
    inflated.extend(frame(HEADERS, END_HEADERS, 1, &block));
    inflated.extend(frame(0x0, END_STREAM, 1, b"data"));
    for (input, why) in [
        (big_table, "undecodable header block"),
        (inflated, "decoded header list larger than 16 KiB"),
    ] {
        let mut out = Vec::new();
        let events = Inbound::default().feed(&input, &mut out);
        assert_eq!(events.gave_up, Some(why));
        assert_eq!(out, input, "{why}");
    }
}

#[test]
fn a_block_without_fields_stays_without_fields() {
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, END_HEADERS, 1, &[]));
    input.extend(frame(HEADERS, END_HEADERS, 3, &[0x83]));
    let mut out = Vec::new();
    assert_eq!(Inbound::default().feed(&input, &mut out).gave_up, None);
    let got = frames(&out);
    assert_eq!(got[0].3, b"", "a block may not end with a size update");
    assert_eq!(
        got[1].3,
        [EMPTY_TABLE, 0x83],
        "the next one empties the table"
    );
}

#[test]
fn resets_are_found_wherever_the_writes_split_them() {
    let mut written = frame(0x4, 0, 0, &[]);
    written.extend(frame(0x0, 0, 1, &frame(RST_STREAM, 0, 9, &[0, 0, 0, 2])));
    written.extend(frame(RST_STREAM, 0, 1, &[0, 0, 0, 1]));
    written.extend(frame(RST_STREAM, 0, 3, &[0, 0, 0, 0]));
    written.extend(frame(
        GOAWAY,
        0,
        0,
        &[0, 0, 0, 3, 0, 0, 0, 0, b'b', b'y', b'e'],
    ));
    written.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0xb, b'x']));
    let want = vec![
        Reset {
            connection: false,
            stream: 1,
            code: 1,
        },
        Reset {
            connection: true,
            stream: 5,
            code: 0xb,
        },
    ];
    assert_eq!(Outbound::default().observe(&written), want);
    let mut outbound = Outbound::default();
    let mut found = Vec::new();
    for b in &written {
        found.extend(outbound.observe(std::slice::from_ref(b)));
    }
    assert_eq!(found, want);
    assert_eq!(
        (want[0].kind(), want[0].code_name()),
        ("stream", "PROTOCOL_ERROR")
    );
    assert_eq!(
        (want[1].kind(), want[1].code_name()),
        ("connection", "ENHANCE_YOUR_CALM")
    );
}
