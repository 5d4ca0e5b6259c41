"""Write the real-world message corpus (the ``*.eml`` files next to this script).

The committed ``.eml`` files are the fixture; this script is how they were made and
how to remake them (``python test/data/corpus/make_corpus.py``). It writes bytes
exactly as the named client, list server, ESP or MTA puts them on the wire: CRLF
line ends unless a case says otherwise, folding with tabs or spaces as that software
does, raw 8-bit where that software sends it. Nothing here goes through the
``email`` package: every byte is spelled out or computed with ``base64``/``hashlib``.
Attachment and signature bytes are pseudo-random but deterministic (SHA-256 in
counter mode), so the output never changes between runs.

``test_envelope_corpus.py`` checks that the files still match this script.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))

CRLF = b"\r\n"
LF = b"\n"


def det_bytes(label: str, size: int) -> bytes:
    """``size`` deterministic pseudo-random bytes, seeded by ``label``."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{label}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def b64_lines(data: bytes, width: int = 76) -> list[str]:
    """Base64 of ``data`` cut into MIME body lines of ``width`` characters."""
    text = base64.b64encode(data).decode("ascii")
    return [text[i : i + width] for i in range(0, len(text), width)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def ew_b(text: str, charset: str = "UTF-8") -> str:
    """An RFC 2047 B encoded word."""
    return f"=?{charset}?B?{b64(text.encode(charset))}?="


def ew_q(text: str, charset: str = "UTF-8") -> str:
    """An RFC 2047 Q encoded word (only what these samples need)."""
    out = []
    for byte in text.encode(charset):
        char = chr(byte)
        if char == " ":
            out.append("_")
        elif char.isalnum() and byte < 128:
            out.append(char)
        else:
            out.append(f"={byte:02X}")
    return f"=?{charset}?Q?{''.join(out)}?="


def fake_sig(label: str) -> str:
    """A base64 RSA-2048-sized signature value (344 characters)."""
    return b64(det_bytes(label, 256))


def fake_bh(label: str) -> str:
    return b64(hashlib.sha256(label.encode()).digest())


def join(lines: list[str | bytes], eol: bytes = CRLF, final: bool = True) -> bytes:
    """Encode each line as UTF-8 (bytes are kept as they are) and end it with ``eol``."""
    encoded = [line if isinstance(line, bytes) else line.encode("utf-8") for line in lines]
    data = eol.join(encoded)
    return data + eol if final else data


def folded(label: str, value: str, width: int = 72, indent: str = "\t") -> list[str]:
    """``value`` cut into pieces of ``width`` characters, continued with ``indent``."""
    pieces = [value[i : i + width] for i in range(0, len(value), width)]
    return [label + pieces[0]] + [indent + piece for piece in pieces[1:]]


# ---------------------------------------------------------------------------------------
# The messages
# ---------------------------------------------------------------------------------------


def thunderbird_alternative_attachment() -> bytes:
    """Thunderbird 102: text + HTML alternative and a base64 PDF, preamble line."""
    outer = "------------Wt1pV0Jq8ZyR3sKcLxE4nA2b"
    inner = "------------a7Ho2mQeVu9cNz5Tg3RkYf1D"
    sig = fake_sig("tb-dkim")
    pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + det_bytes("tb-pdf", 6000) + b"\n%%EOF\n"
    lines = [
        "Received: from mail-out.example.org (mail-out.example.org [192.0.2.25])",
        "\tby mx.example.net (Postfix) with ESMTPS id 4Qx1Zt3k9Tz9sWd",
        "\tfor <alice@example.net>; Tue, 14 Mar 2023 09:12:44 +0100 (CET)",
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org;",
        "\ts=mail2023; t=1678781563;",
        f"\tbh={fake_bh('tb-body')};",
        "\th=Date:From:To:Cc:Subject:From;",
        *folded("\tb=", sig, 70),
        "Message-ID: <9b1c7d0e-5a3f-4e2b-8c61-1f0e7a2d4b55@example.org>",
        "Date: Tue, 14 Mar 2023 09:12:43 +0100",
        "MIME-Version: 1.0",
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:102.0) Gecko/20100101",
        " Thunderbird/102.8.0",
        "Content-Language: en-US",
        "To: Alice Example <alice@example.net>",
        "Cc: \"Bob O'Example\" <bob@example.net>",
        "From: Carol Sender <carol@example.org>",
        "Subject: Quarterly report (draft 3) with attachment",
        "Content-Type: multipart/mixed;",
        f' boundary="{outer}"',
        "",
        "This is a multi-part message in MIME format.",
        f"--{outer}",
        "Content-Type: multipart/alternative;",
        f' boundary="{inner}"',
        "",
        f"--{inner}",
        "Content-Type: text/plain; charset=UTF-8; format=flowed",
        "Content-Transfer-Encoding: 7bit",
        "",
        "Hi Alice,",
        "",
        "here is the third draft of the quarterly report. The figures for March are ",
        "still estimates.",
        "",
        "...and before you ask: yes, the appendix moved to the end.",
        ".",
        "From the numbers alone it looks like a good quarter.",
        "",
        "Carol",
        "",
        f"--{inner}",
        "Content-Type: text/html; charset=UTF-8",
        "Content-Transfer-Encoding: quoted-printable",
        "",
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        '    <meta http-equiv=3D"content-type" content=3D"text/html; charset=3DUTF-8=',
        '">',
        "  </head>",
        "  <body>",
        "    <p>Hi Alice,</p>",
        "    <p>here is the third draft of the quarterly report. The figures for Marc=",
        "h are still estimates.</p>",
        "    <p>...and before you ask: yes, the appendix moved to the end.<br>",
        "    </p>",
        "    <p>Carol<br>",
        "    </p>",
        "  </body>",
        "</html>",
        "",
        f"--{inner}--",
        f"--{outer}",
        'Content-Type: application/pdf; name="Q1-report.pdf"',
        'Content-Disposition: attachment; filename="Q1-report.pdf"',
        "Content-Transfer-Encoding: base64",
        "",
        *b64_lines(pdf),
        "",
        f"--{outer}--",
    ]
    return join(lines)


def _digest_part(msgid: str, date: str, sender: str, subject: str, body: list[str]) -> list[str]:
    return [
        "Content-Type: message/rfc822",
        "MIME-Version: 1.0",
        "",
        f"Message-ID: <{msgid}>",
        f"Date: {date}",
        f"From: {sender}",
        "To: example-users@lists.example.org",
        f"Subject: {subject}",
        "Content-Type: text/plain; charset=\"us-ascii\"",
        "Content-Transfer-Encoding: 7bit",
        "",
        *body,
        "",
    ]


def mailman_digest() -> bytes:
    """Mailman 2.1 MIME digest: multipart/mixed holding a multipart/digest of messages."""
    outer = "===============3147267480912771450=="
    digest = "===============0522381093462851286=="
    lines = [
        "Received: from lists.example.org (lists.example.org [192.0.2.80])",
        "\tby mx.example.net (Postfix) with ESMTP id 4Qx9Lm1Fq2z9sWh",
        "\tfor <alice@example.net>; Wed, 15 Mar 2023 13:00:03 +0100 (CET)",
        "From: example-users-request@lists.example.org",
        "Subject: Example-users Digest, Vol 214, Issue 7",
        "To: example-users@lists.example.org",
        "Reply-To: example-users@lists.example.org",
        "Date: Wed, 15 Mar 2023 12:00:02 +0000",
        "Message-ID: <mailman.1234.1678881602.5678.example-users@lists.example.org>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{outer}"',
        "X-BeenThere: example-users@lists.example.org",
        "X-Mailman-Version: 2.1.39",
        "Precedence: list",
        "List-Id: Example users <example-users.lists.example.org>",
        "List-Unsubscribe: <https://lists.example.org/mailman/options/example-users>,",
        " <mailto:example-users-request@lists.example.org?subject=unsubscribe>",
        "List-Archive: <https://lists.example.org/pipermail/example-users/>",
        "List-Post: <mailto:example-users@lists.example.org>",
        "List-Help: <mailto:example-users-request@lists.example.org?subject=help>",
        "List-Subscribe: <https://lists.example.org/mailman/listinfo/example-users>,",
        " <mailto:example-users-request@lists.example.org?subject=subscribe>",
        "Errors-To: example-users-bounces@lists.example.org",
        'Sender: "Example-users" <example-users-bounces@lists.example.org>',
        "",
        f"--{outer}",
        'Content-Type: text/plain; charset="us-ascii"',
        "MIME-Version: 1.0",
        "Content-Transfer-Encoding: 7bit",
        "Content-Description: Example-users Digest, Vol 214, Issue 7",
        "",
        "Send Example-users mailing list submissions to",
        "\texample-users@lists.example.org",
        "",
        "When replying, please edit your Subject line so it is more specific",
        'than "Re: Contents of Example-users digest..."',
        "",
        "",
        "Today's Topics:",
        "",
        "   1. Re: relay drops attachments (Dave Example)",
        "   2. Building on Debian 12 (Erin Example)",
        "",
        "",
        f"--{outer}",
        f'Content-Type: multipart/digest; boundary="{digest}"',
        "MIME-Version: 1.0",
        "",
        f"--{digest}",
        *_digest_part(
            "CAK7x1y2z3@mail.example.com",
            "Tue, 14 Mar 2023 18:41:07 +0000",
            "Dave Example <dave@example.com>",
            "Re: [Example-users] relay drops attachments",
            [
                "On Tue, Mar 14, 2023 at 5:02 PM Erin wrote:",
                "> Every multipart message arrives empty.",
                "",
                "Same here. The dump ends after the first boundary line:",
                "",
                "--boundary-from-the-quoted-message",
                ".",
                "..",
                ". leading dot, then text",
                "",
                "Dave",
            ],
        ),
        f"--{digest}",
        *_digest_part(
            "20230315071522.GA3141@erin.example.net",
            "Wed, 15 Mar 2023 08:15:22 +0100",
            "Erin Example <erin@example.net>",
            "[Example-users] Building on Debian 12",
            [
                "Hi all,",
                "",
                "the build needs python3-dev and libffi-dev on a fresh Debian 12.",
                "",
                "-- ",
                "Erin",
            ],
        ),
        f"--{digest}--",
        "",
        f"--{outer}",
        'Content-Type: text/plain; charset="us-ascii"',
        "MIME-Version: 1.0",
        "Content-Transfer-Encoding: 7bit",
        "Content-Disposition: inline",
        "",
        "Subject: Digest Footer",
        "",
        "_______________________________________________",
        "Example-users mailing list",
        "example-users@lists.example.org",
        "https://lists.example.org/mailman/listinfo/example-users",
        "",
        "",
        f"--{outer}--",
        "",
        "End of Example-users Digest, Vol 214, Issue 7",
        "**********************************************",
    ]
    return join(lines)


def postfix_dsn() -> bytes:
    """Postfix 3.7 non-delivery report: multipart/report with the three standard parts."""
    boundary = "4Qx2B81m0Nz9sWf.1678782601/mx.example.net"
    lines = [
        "Received: by mx.example.net (Postfix)",
        "\tid 4Qx2B81m0Nz9sWf; Tue, 14 Mar 2023 09:30:01 +0100 (CET)",
        "Date: Tue, 14 Mar 2023 09:30:01 +0100 (CET)",
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)",
        "Subject: Undelivered Mail Returned to Sender",
        "To: carol@example.org",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
        "Message-Id: <20230314083001.4Qx2B81m0Nz9sWf@mx.example.net>",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        "This is the mail system at host mx.example.net.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients. It's attached below.",
        "",
        "For further assistance, please send mail to postmaster.",
        "",
        "If you do so, please include this problem report. You can",
        "delete your own text from the attached returned message.",
        "",
        "                   The mail system",
        "",
        "<nobody@example.net>: host mailstore.example.net[198.51.100.7] said: 550 5.1.1",
        "    <nobody@example.net>: Recipient address rejected: User unknown in local",
        "    recipient table (in reply to RCPT TO command)",
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        "Reporting-MTA: dns; mx.example.net",
        "X-Postfix-Queue-ID: 4Qx1Zt3k9Tz9sWd",
        "X-Postfix-Sender: rfc822; carol@example.org",
        "Arrival-Date: Tue, 14 Mar 2023 09:12:44 +0100 (CET)",
        "",
        "Final-Recipient: rfc822; nobody@example.net",
        "Original-Recipient: rfc822;nobody@example.net",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mailstore.example.net",
        "Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.net>: Recipient address",
        "    rejected: User unknown in local recipient table",
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers",
        "Content-Transfer-Encoding: 8bit",
        "",
        "Return-Path: <carol@example.org>",
        "Received: from mail-out.example.org (mail-out.example.org [192.0.2.25])",
        "\tby mx.example.net (Postfix) with ESMTPS id 4Qx1Zt3k9Tz9sWd",
        "\tfor <nobody@example.net>; Tue, 14 Mar 2023 09:12:44 +0100 (CET)",
        "Message-ID: <e51a7c3b-0d2f-4b8e-9a16-7c4d2e8f1a03@example.org>",
        "Date: Tue, 14 Mar 2023 09:12:43 +0100",
        "MIME-Version: 1.0",
        "From: Carol Sender <carol@example.org>",
        "To: nobody@example.net",
        "Subject: Lunch on Friday?",
        "Content-Type: text/plain; charset=UTF-8; format=flowed",
        "Content-Transfer-Encoding: 7bit",
        "",
        f"--{boundary}--",
    ]
    return join(lines)


def _original_html_mail() -> list[str]:
    alt = "000000000000a1b2c3d405f6e7f8"
    return [
        "Received: by mail-wm1-f41.example.com with SMTP id 5b1f17b1804b1-42f6f1a8c3dso12345f9.1",
        "        for <grace@example.com>; Mon, 13 Mar 2023 07:55:12 -0700 (PDT)",
        "MIME-Version: 1.0",
        "From: Heidi Example <heidi@example.com>",
        "Date: Mon, 13 Mar 2023 15:55:01 +0100",
        "Message-ID: <CAHx9mE7kq2R0b+Zt8vP1=uWq3f4Yx@mail.example.com>",
        "Subject: Invoice 2023-0117",
        "To: Grace Example <grace@example.com>",
        f'Content-Type: multipart/alternative; boundary="{alt}"',
        "",
        f"--{alt}",
        'Content-Type: text/plain; charset="UTF-8"',
        "",
        "Hello Grace,",
        "",
        "please find the invoice details below.",
        "",
        "Heidi",
        "",
        f"--{alt}",
        'Content-Type: text/html; charset="UTF-8"',
        "",
        '<div dir=3D"ltr">Hello Grace,<div><br></div><div>please find the invoice =',
        "details below.</div><div><br></div><div>Heidi</div></div>",
        "",
        f"--{alt}--",
    ]


def forward_as_attachment() -> bytes:
    """Thunderbird "Forward as Attachment": the original as a message/rfc822 part."""
    boundary = "------------0PqXz7Lm2Vb9Rk4TsWn1Yc8E"
    lines = [
        "Message-ID: <3f6d2a91-7b4c-4e0f-a8d5-92c1e6b70f44@example.com>",
        "Date: Tue, 14 Mar 2023 10:03:27 +0100",
        "MIME-Version: 1.0",
        "User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:102.0) Gecko/20100101",
        " Thunderbird/102.8.0",
        "Content-Language: de-DE",
        "To: Alice Example <alice@example.net>",
        "From: Grace Example <grace@example.com>",
        "Subject: Fwd: Invoice 2023-0117",
        "X-Mozilla-Draft-Info: internal/draft; vcard=0; receipt=0; DSN=0; uuencode=0;",
        " attachmentreminder=0; deliveryformat=0",
        "Content-Type: multipart/mixed;",
        f' boundary="{boundary}"',
        "",
        "This is a multi-part message in MIME format.",
        f"--{boundary}",
        "Content-Type: text/plain; charset=UTF-8; format=flowed",
        "Content-Transfer-Encoding: 7bit",
        "",
        "See the forwarded message.",
        "",
        f"--{boundary}",
        'Content-Type: message/rfc822; charset=UTF-8; name="Invoice 2023-0117.eml"',
        'Content-Disposition: attachment; filename="Invoice 2023-0117.eml"',
        "",
        *_original_html_mail(),
        "",
        f"--{boundary}--",
    ]
    return join(lines)


def toplevel_rfc822() -> bytes:
    """A quarantine release: the whole body is one message/rfc822 (the issue's crash)."""
    lines = [
        "Received: from quarantine.example.net (localhost [127.0.0.1])",
        "\tby mx.example.net (Postfix) with ESMTP id 4QxB7f2Zq1z9sWj",
        "\tfor <grace@example.com>; Tue, 14 Mar 2023 11:20:00 +0100 (CET)",
        "From: Quarantine <quarantine@example.net>",
        "To: grace@example.com",
        "Subject: Released from quarantine: Invoice 2023-0117",
        "Date: Tue, 14 Mar 2023 11:20:00 +0100",
        "Message-ID: <release-7781@quarantine.example.net>",
        "MIME-Version: 1.0",
        "Content-Type: message/rfc822",
        "Content-Disposition: inline",
        "",
        *_original_html_mail(),
    ]
    return join(lines)


def utf8_8bit_body() -> bytes:
    """A UTF-8 text body sent as 8bit (Content-Transfer-Encoding: 8bit)."""
    lines = [
        "Received: from smtp.example.de (smtp.example.de [203.0.113.44])",
        "\tby mx.example.net (Postfix) with ESMTPS id 4QxC3n0Tq8z9sWk",
        "\tfor <alice@example.net>; Tue, 14 Mar 2023 12:01:13 +0100 (CET)",
        f"From: {ew_q('Jürgen Müller')} <juergen@example.de>",
        "To: Alice Example <alice@example.net>",
        f"Subject: {ew_q('Grüße aus Köln')}",
        "Date: Tue, 14 Mar 2023 12:01:09 +0100",
        "Message-ID: <20230314120109.1f2e3d4c@example.de>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "X-Mailer: Claws Mail 4.1.1 (GTK 3.24.36; x86_64-pc-linux-gnu)",
        "",
        "Hallo Alice,",
        "",
        "viele Grüße aus Köln! Das Wetter ist schön, die Straßen sind voller Jecken.",
        "Preise: 3,50 € für ein Kölsch, 12 £ in London, 500 ¥ in Tōkyō.",
        "Русский текст, ελληνικά, 日本語のテキスト, עברית, العربية.",
        "Emoji: 🎉🍺🚋",
        ".Zeile mit Punkt am Anfang",
        "",
        "Bis bald,",
        "Jürgen",
    ]
    return join(lines)


def smtputf8_headers() -> bytes:
    """RFC 6532 internationalised headers: raw UTF-8 names and addresses."""
    lines = [
        "Received: from mail.exämple.test (mail.xn--exmple-cua.test [198.51.100.12])",
        "\tby mx.example.test (Postfix) with UTF8SMTPS id 4QxD1k7Vw3z9sWm",
        "\tfor <zoë@example.test>; Tue, 14 Mar 2023 13:45:02 +0100 (CET)",
        "From: Jöran Øster <jöran@exämple.test>",
        "To: Zoë Þórsdóttir <zoë@example.test>",
        "Cc: 李小龍 <小龍@例え.test>",
        "Subject: Größenordnung — 東京 meeting 🚀",
        "Date: Tue, 14 Mar 2023 13:44:58 +0100",
        "Message-ID: <c0ffee-1@exämple.test>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        "Hej Zoë,",
        "",
        "the Tōkyō numbers are in. Ses på fredag!",
        "",
        "Jöran",
    ]
    return join(lines)


def folding_and_spacing() -> bytes:
    """Folding with tabs (Postfix) and spaces (Exim), odd spacing around colons."""
    lines = [
        "Received: from client.example.com (client.example.com [203.0.113.9])",
        "\tby mx.example.net (Postfix) with ESMTP id 4QxF0c5Mn6z9sWn",
        "\tfor <alice@example.net>; Tue, 14 Mar 2023 14:10:31 +0100 (CET)",
        "Received: from [10.0.0.5] (helo=laptop)",
        "        by client.example.com with esmtpsa  (TLS1.3) tls TLS_AES_256_GCM_SHA384",
        "        (Exim 4.96)",
        "        (envelope-from <frank@example.com>)",
        "        id 1pbx2c-000Abc-2E",
        "        for alice@example.net;",
        "        Tue, 14 Mar 2023 14:10:30 +0100",
        "From:   Frank Example <frank@example.com>",
        "To:\talice@example.net",
        "Subject: Folding test: a subject continued",
        "  with two spaces",
        "\tand then with a tab",
        "X-Foo:bar",
        "X-Trailing: value with trailing blanks   ",
        "X-Trailing-Tab: value with a trailing tab\t",
        "X-Several-Spaces:      six spaces before this value",
        "X-Empty:",
        "X-Empty-Space: ",
        "MIME-Version:1.0",
        "Content-Type: text/plain;",
        '\tcharset="us-ascii"',
        "Date: Tue, 14 Mar 2023 14:10:29 +0100",
        "Message-ID: <1pbx2c-000Abc-2E@client.example.com>",
        "References: <a1@example.com>",
        " <b2@example.com>",
        "\t<c3@example.com>",
        "X-Mailer: Mutt 2.2.9",
        "",
        "Body text; trailing blanks here too   ",
        "\tand a line that starts with a tab.",
    ]
    return join(lines)


def esp_bulk_long_tokens() -> bytes:
    """A bulk-sender newsletter: two DKIM signatures (one with an unfolded b=),
    RFC 8058 one-click List-Unsubscribe with a 150-character URL and a header line
    of exactly 998 octets."""
    alt = "b1_9c2d8e4f7a6b5c3d2e1f0a9b8c7d6e5f"
    token = "".join(f"{n:04x}" for n in range(30))[:80]
    unsub_url = f"https://u1234567.ct.example-esp.test/lu/unsubscribe?oc={token}"
    unsub_url += "&m=" + "x" * (150 - len(unsub_url) - 3)
    assert len(unsub_url) == 150
    tracking_name = "X-Entity-Tracking: "
    tracking = b64(det_bytes("esp-tracking", 900)).replace("+", "-").replace("/", "_")
    tracking_line = tracking_name + tracking[: 998 - len(tracking_name)]
    assert len(tracking_line) == 998
    html = (
        '<!doctype html><html><head><meta charset="utf-8"><title>Spring sale</title></head>'
        '<body style="margin:0"><table width="100%"><tr><td>'
        "<h1>Spring sale: up to 50% off</h1>"
        '<p><a href="https://shop.example.com/sale?utm_source=newsletter">Shop now</a></p>'
        f'<p><a href="{unsub_url}">Unsubscribe</a></p>'
        "</td></tr></table></body></html>"
    ).encode()
    lines = [
        "Received: from o1.email.example-esp.test (o1.email.example-esp.test [198.51.100.40])",
        "\tby mx.example.net (Postfix) with ESMTPS id 4QxG8t1Rb2z9sWp",
        "\tfor <alice@example.net>; Tue, 14 Mar 2023 15:00:07 +0100 (CET)",
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=shop.example.com;",
        "\th=content-type:from:mime-version:subject:list-unsubscribe:",
        "\tlist-unsubscribe-post:to:cc:content-type:from:subject:to;",
        f"\ts=s1; bh={fake_bh('esp-body-1')};",
        f"\tb={fake_sig('esp-dkim-1')}",
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example-esp.test;",
        "\th=content-type:from:mime-version:subject:list-unsubscribe:",
        "\tlist-unsubscribe-post:to:cc:content-type:from:subject:to;",
        f"\ts=smtpapi; bh={fake_bh('esp-body-2')};",
        *folded("\tb=", fake_sig("esp-dkim-2"), 76),
        'Content-Type: multipart/alternative; boundary="' + alt + '"',
        "Date: Tue, 14 Mar 2023 14:00:05 +0000 (UTC)",
        "From: Example Shop <news@shop.example.com>",
        "Mime-Version: 1.0",
        "Message-ID: <Zt3kR9qLQe2xY8vP1c4T0w@geopod-ismtpd-12>",
        "Subject: Spring sale: up to 50% off everything",
        "Reply-To: support@shop.example.com",
        f"List-Unsubscribe: <{unsub_url}>,",
        " <mailto:unsubscribe-7a9f3c@bounce.example-esp.test?subject=unsubscribe>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "Feedback-ID: 1234567:newsletter:esp",
        "Precedence: bulk",
        tracking_line,
        "To: alice@example.net",
        "X-Mailer: ESP Mailer 7.3",
        "",
        f"--{alt}",
        "Content-Transfer-Encoding: quoted-printable",
        "Content-Type: text/plain; charset=us-ascii",
        "Mime-Version: 1.0",
        "",
        "Spring sale: up to 50% off everything",
        "",
        "Shop now: https://shop.example.com/sale?utm_source=3Dnewsletter",
        "",
        "Unsubscribe: https://u1234567.ct.example-esp.test/lu/unsubscribe?oc=3D000=",
        "0000100020003",
        f"--{alt}",
        "Content-Transfer-Encoding: base64",
        "Content-Type: text/html; charset=utf-8",
        "Mime-Version: 1.0",
        "",
        *b64_lines(html),
        f"--{alt}--",
    ]
    return join(lines)


def encoded_words() -> bytes:
    """RFC 2047 encoded words in Subject, From, To and Cc (B and Q, several charsets)."""
    subject_1 = ew_b("🎉 Sommerschlussverkauf: bis zu 50% ")
    subject_2 = ew_b("Rabatt auf alles")
    lines = [
        "Received: from mail.example.be (mail.example.be [192.0.2.61])",
        "\tby mx.example.net (Postfix) with ESMTPS id 4QxH2p6Kd5z9sWq",
        "\tfor <alice@example.net>; Tue, 14 Mar 2023 16:22:40 +0100 (CET)",
        f"Subject: {subject_1}",
        f" {subject_2}",
        f"From: {ew_q('André Pirard', 'ISO-8859-1')} <pirard@example.be>",
        f"To: {ew_q('Renée', 'UTF-8')} <alice@example.net>, \"Keld\" <keld@example.dk>",
        "Cc: =?iso-2022-jp?B?GyRCJUYlOSVIGyhC?= <tanaka@example.jp>",
        f"Thread-Topic: {ew_q('Résumé', 'windows-1252')}",
        "Date: Tue, 14 Mar 2023 16:22:37 +0100",
        "Message-ID: <AM0PR10MB3121A7C2D9@AM0PR10MB3121.example.outlook.test>",
        "Accept-Language: fr-BE, en-US",
        "Content-Language: fr-BE",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=\"iso-8859-1\"",
        "Content-Transfer-Encoding: quoted-printable",
        "X-MS-Has-Attach: ",
        "X-MS-TNEF-Correlator: ",
        "",
        "Bonjour Ren=E9e,",
        "",
        "voici le r=E9sum=E9.",
        "",
        "Andr=E9",
    ]
    return join(lines)


def received_chain_arc() -> bytes:
    """A long trace: Gmail-style ARC set, SPF/DKIM results and ten Received fields."""
    hops = [
        ("mx.example.net", "mail-lf1-f52.google.example", "209.85.167.52", "ESMTPS",
         "4QxJ5r8Wc7z9sWr", "Tue, 14 Mar 2023 17:05:21 +0100 (CET)"),
        ("mx.google.example", "lists.example.org", "192.0.2.80", "ESMTPS",
         "n12-20020a05600c3b8c00b003ed2a5e7c9csi1234567wms.75",
         "Tue, 14 Mar 2023 09:05:20 -0700 (PDT)"),
        ("lists.example.org", "localhost", "127.0.0.1", "ESMTP",
         "4QxJ5q3Tn4z8vBc", "Tue, 14 Mar 2023 16:05:19 +0000 (UTC)"),
        ("lists.example.org", "mail.example.com", "203.0.113.17", "ESMTPS",
         "4QxJ5p6Sm1z8vBb", "Tue, 14 Mar 2023 16:05:18 +0000 (UTC)"),
        ("mail.example.com", "filter.example.com", "10.1.2.3", "ESMTP",
         "1pcA7x-0004Zy-Qq", "Tue, 14 Mar 2023 17:05:17 +0100"),
        ("filter.example.com", "mail.example.com", "10.1.2.4", "ESMTP",
         "1pcA7w-0004Zx-Pp", "Tue, 14 Mar 2023 17:05:16 +0100"),
        ("mail.example.com", "submit.example.com", "10.1.2.5", "ESMTPSA",
         "1pcA7v-0004Zw-Oo", "Tue, 14 Mar 2023 17:05:15 +0100"),
        ("submit.example.com", "[10.9.8.7]", "10.9.8.7", "ESMTPSA",
         "1pcA7u-0004Zv-Nn", "Tue, 14 Mar 2023 17:05:14 +0100"),
        ("[10.9.8.7]", "localhost", "127.0.0.1", "LMTP",
         "aBcDeFgH", "Tue, 14 Mar 2023 17:05:13 +0100"),
        ("laptop.example.com", "localhost", "::1", "SMTP",
         "4QxJ5m0Qk9z1abc", "Tue, 14 Mar 2023 17:05:12 +0100 (CET)"),
    ]
    received: list[str] = []
    for by, frm, ip, proto, ident, date in hops:
        received += [
            f"Received: from {frm} ({frm} [{ip}])",
            f"\tby {by} with {proto} id {ident}",
            f"\tfor <alice@example.net>; {date}",
        ]
    lines = [
        received[0],
        received[1],
        received[2],
        "ARC-Seal: i=2; a=rsa-sha256; t=1678809921; cv=pass;",
        "        d=google.example; s=arc-20160816;",
        *folded("        b=", fake_sig("arc-seal-2"), 70, "         "),
        "ARC-Message-Signature: i=2; a=rsa-sha256; c=relaxed/relaxed; d=google.example;"
        " s=arc-20160816;",
        "        h=list-unsubscribe:list-subscribe:list-archive:list-help:list-post",
        "         :list-id:mailing-list:precedence:to:subject:message-id:date:from",
        "         :mime-version:dkim-signature;",
        f"        bh={fake_bh('arc-ams-2')};",
        *folded("        b=", fake_sig("arc-ams-2"), 70, "         "),
        "ARC-Authentication-Results: i=2; mx.google.example;",
        "       dkim=pass header.i=@example.com header.s=sel1 header.b=Zt3kR9qL;",
        "       arc=pass (i=1 spf=pass spfdomain=example.com dkim=pass dkdomain=example.com);",
        "       spf=pass (google.example: domain of list-bounces@lists.example.org designates"
        " 192.0.2.80 as permitted sender) smtp.mailfrom=list-bounces@lists.example.org",
        "Authentication-Results: mx.example.net; dkim=pass (2048-bit key;"
        " unprotected) header.d=example.com header.i=@example.com",
        "\theader.b=\"Zt3kR9qL\"; arc=pass smtp.remote-ip=209.85.167.52",
        "Received-SPF: pass (mx.example.net: domain of list-bounces@lists.example.org"
        " designates 209.85.167.52 as permitted sender)",
        *received[3:],
        "X-Google-Smtp-Source: AK7set/" + "Qz" * 60,
        "X-Received: by 2002:a05:600c:3b8c:b0:3ed:2a5e:7c9c with SMTP id"
        " n12-20020a05600c3b8c00b003ed2a5e7c9cmr1234567wms.75.1678809920123;",
        "        Tue, 14 Mar 2023 09:05:20 -0700 (PDT)",
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.com; s=sel1;",
        "\tt=1678809912; bh=" + fake_bh("chain-body") + ";",
        "\th=From:To:Subject:Date:Message-ID:MIME-Version:Content-Type;",
        *folded("\tb=", fake_sig("chain-dkim"), 74),
        "From: Ivan Example <ivan@example.com>",
        "To: example-users@lists.example.org",
        "Subject: [Example-users] Long trace",
        "Date: Tue, 14 Mar 2023 17:05:11 +0100",
        "Message-ID: <trace-0042@laptop.example.com>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "List-Id: Example users <example-users.lists.example.org>",
        "Precedence: list",
        "",
        "A message that went through many hops.",
    ]
    return join(lines)


def no_body() -> bytes:
    """Headers and the blank line, nothing after it ("subject says it all")."""
    lines = [
        "From: Judy Example <judy@example.com>",
        "To: alice@example.net",
        "Subject: Call me when you land (EOM)",
        "Date: Tue, 14 Mar 2023 18:00:00 +0100",
        "Message-ID: <eom-1@example.com>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
    ]
    return join(lines)


def header_only() -> bytes:
    """Header fields only: no blank line at all (a monitoring script's ping)."""
    lines = [
        "From: nagios@monitor.example.com",
        "To: oncall@example.net",
        "Subject: ** PROBLEM Service Alert: db1/Disk is CRITICAL **",
        "Date: Tue, 14 Mar 2023 18:05:00 +0100",
        "Message-ID: <nagios-1678813500@monitor.example.com>",
        "X-Nagios-Host: db1",
    ]
    return join(lines)


def bare_lf_cron() -> bytes:
    """Cron output from a Unix host via ``sendmail -t``: every line ends in a bare LF."""
    lines = [
        "From: root@host.example.net (Cron Daemon)",
        "To: root@host.example.net",
        "Subject: Cron <root@host> /usr/local/bin/backup.sh",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: 8bit",
        "X-Cron-Env: <SHELL=/bin/sh>",
        "X-Cron-Env: <HOME=/root>",
        "X-Cron-Env: <PATH=/usr/bin:/bin>",
        "X-Cron-Env: <LOGNAME=root>",
        "Message-Id: <E1pcB2x-0001Ab-9Z@host.example.net>",
        "Date: Tue, 14 Mar 2023 03:00:01 +0100",
        "",
        "rsync: [sender] link_stat \"/srv/data/ünïcödé\" failed: No such file or directory (2)",
        ".",
        "rsync error: some files/attrs were not transferred (code 23) at main.c(1333)",
    ]
    return join(lines, LF)


def bad_no_colon() -> bytes:
    """A line without a colon inside the header block (a broken script)."""
    lines = [
        "From: backup@example.com",
        "To: ops@example.net",
        "Subject: nightly backup report",
        "This line has no colon and is not a header",
        "Date: Tue, 14 Mar 2023 04:00:00 +0100",
        "Message-ID: <backup-20230314@example.com>",
        "",
        "All volumes backed up.",
    ]
    return join(lines)


def bad_header_names() -> bytes:
    """Header names with a space, an 8-bit byte, and a space before the colon."""
    lines = [
        "From: legacy@example.com",
        "To: alice@example.net",
        "Subject: legacy gateway output",
        "X Bad Name: a name with spaces",
        b"X-Caf\xe9: an 8-bit Latin-1 byte in the name",
        "X-Obs-Name : obsolete space before the colon",
        "Date: Tue, 14 Mar 2023 04:10:00 +0100",
        "Message-ID: <legacy-1@example.com>",
        "",
        "Sent by a gateway from the last century.",
    ]
    return join(lines)


def bad_leading_continuation() -> bytes:
    """The first line is a continuation line (a header got cut off above it)."""
    lines = [
        " (continued from a header that was cut off)",
        "From: truncated@example.com",
        "To: alice@example.net",
        "Subject: starts with a continuation line",
        "Date: Tue, 14 Mar 2023 04:20:00 +0100",
        "Message-ID: <cut-1@example.com>",
        "",
        "Body.",
    ]
    return join(lines)


def pgp_signed_preamble_epilogue() -> bytes:
    """PGP/MIME multipart/signed with a preamble and an epilogue: any change to the
    signed part's bytes breaks the signature."""
    outer = "------------ZbE5Xyq3nSkVfW0T1dPzYxAc"
    inner = "------------lOq1Hc8vT2mWz6RkYb4Nd0Sf"
    sig_lines = b64_lines(det_bytes("pgp-signature", 180), 64)
    lines = [
        "Message-ID: <7a0c4d1e-2f3b-4c5d-8e6f-a7b8c9d0e1f2@example.org>",
        "Date: Tue, 14 Mar 2023 19:30:12 +0100",
        "MIME-Version: 1.0",
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:102.0) Gecko/20100101",
        " Thunderbird/102.8.0",
        "From: Mallory Example <mallory@example.org>",
        "To: Alice Example <alice@example.net>",
        "Subject: Signed release notes",
        "Content-Type: multipart/signed; micalg=pgp-sha256;",
        ' protocol="application/pgp-signature";',
        f' boundary="{outer}"',
        "",
        "This is an OpenPGP/MIME signed message (RFC 4880 and 3156)",
        f"--{outer}",
        f'Content-Type: multipart/mixed; boundary="{inner}";',
        ' protected-headers="v1"',
        "From: Mallory Example <mallory@example.org>",
        "To: Alice Example <alice@example.net>",
        "Message-ID: <7a0c4d1e-2f3b-4c5d-8e6f-a7b8c9d0e1f2@example.org>",
        "Subject: Signed release notes",
        "",
        f"--{inner}",
        "Content-Type: text/plain; charset=UTF-8; format=flowed",
        "Content-Transfer-Encoding: 7bit",
        "",
        "Release 2.4.1 fixes the relay corruption of multipart mail.",
        "",
        "-- ",
        "Mallory",
        "",
        f"--{inner}--",
        "",
        f"--{outer}",
        'Content-Type: application/pgp-signature; name="OpenPGP_signature.asc"',
        "Content-Description: OpenPGP digital signature",
        'Content-Disposition: attachment; filename="OpenPGP_signature"',
        "",
        "-----BEGIN PGP SIGNATURE-----",
        "",
        *sig_lines,
        "=Qm3x",
        "-----END PGP SIGNATURE-----",
        "",
        f"--{outer}--",
        "",
        "This is the epilogue. Mail readers do not show it.",
        "It must still arrive as it was sent.",
    ]
    return join(lines)


def no_final_newline() -> bytes:
    """A message whose last line has no line end (the wire adds one CRLF)."""
    lines = [
        "From: \"Example, Kim\" <kim@example.com>",
        "To: \"alice@example.net\" <alice@example.net>",
        "Subject: RE: no trailing newline",
        "Thread-Index: AdlWf2c3Kx1y2z3A4B5C6D7E8F9G0H==",
        "Date: Tue, 14 Mar 2023 20:00:00 +0000",
        "Message-ID: <DB9PR01MB1234.eurprd01.prod.example.outlook.test>",
        "Content-Type: text/plain; charset=\"us-ascii\"",
        "Content-Transfer-Encoding: quoted-printable",
        "MIME-Version: 1.0",
        "X-MS-Exchange-Organization-SCL: -1",
        "",
        "Thanks, will do.",
        "",
        "Kim",
    ]
    return join(lines, final=False)


def mixed_line_endings() -> bytes:
    """CRLF mostly, with a bare-LF header line, a bare-CR header line and bare LF/CR in
    the body (a Windows tool that appended Unix output)."""
    data = join(
        [
            "From: tool@example.com",
            "To: alice@example.net",
        ]
    )
    data += b"Subject: mixed line endings\n"
    data += b"X-Old-Mac: this header line ends in a bare CR\r"
    data += join(
        [
            "Date: Tue, 14 Mar 2023 21:00:00 +0100",
            "Message-ID: <mixed-1@example.com>",
            "",
            "Windows line.",
        ]
    )
    data += b"Unix line.\n.\nOld Mac line.\rLast line.\r\n"
    return data


def large_attachment() -> bytes:
    """About 300 KB: a text log with many lines that start with a dot (dot-stuffing
    across the sender's 64 KiB windows), a 998-octet body line and a base64 part."""
    boundary = "=_large_8f1e2d3c4b5a69788796a5b4c3d2e1f0"
    log_lines: list[str] = []
    for n in range(4000):
        if n % 7 == 0:
            log_lines.append(f".{n:05d} dot-leading line of the build log")
        elif n % 11 == 0:
            log_lines.append(".")
        else:
            log_lines.append(f"{n:05d} compiling module_{n % 97:02d}.c ... ok")
    long_line = ("L" * 998)
    lines = [
        "From: ci@build.example.com",
        "To: alice@example.net",
        "Subject: build 8812 log and artifacts",
        "Date: Tue, 14 Mar 2023 22:00:00 +0100",
        "Message-ID: <build-8812@build.example.com>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        'Content-Disposition: attachment; filename="build.log"',
        "",
        *log_lines,
        long_line,
        f"--{boundary}",
        "Content-Type: application/octet-stream",
        'Content-Disposition: attachment; filename="artifact.bin"',
        "Content-Transfer-Encoding: base64",
        "",
        *b64_lines(det_bytes("artifact", 100_000)),
        f"--{boundary}--",
    ]
    return join(lines)


#: File name → builder. The order is the order of the README table.
MESSAGES: dict[str, Callable[[], bytes]] = {
    "01-thunderbird-alternative-attachment.eml": thunderbird_alternative_attachment,
    "02-mailman-digest.eml": mailman_digest,
    "03-postfix-dsn.eml": postfix_dsn,
    "04-forward-as-attachment.eml": forward_as_attachment,
    "05-toplevel-message-rfc822.eml": toplevel_rfc822,
    "06-utf8-8bit-body.eml": utf8_8bit_body,
    "07-smtputf8-headers.eml": smtputf8_headers,
    "08-folding-and-spacing.eml": folding_and_spacing,
    "09-esp-bulk-long-tokens.eml": esp_bulk_long_tokens,
    "10-encoded-words.eml": encoded_words,
    "11-received-chain-arc.eml": received_chain_arc,
    "12-no-body.eml": no_body,
    "13-header-only.eml": header_only,
    "14-bare-lf-cron.eml": bare_lf_cron,
    "15-bad-no-colon.eml": bad_no_colon,
    "16-bad-header-names.eml": bad_header_names,
    "17-bad-leading-continuation.eml": bad_leading_continuation,
    "18-pgp-signed-preamble-epilogue.eml": pgp_signed_preamble_epilogue,
    "19-no-final-newline.eml": no_final_newline,
    "20-mixed-line-endings.eml": mixed_line_endings,
    "21-large-attachment.eml": large_attachment,
}


def build_all() -> dict[str, bytes]:
    """Every corpus file's name and bytes."""
    return {name: build() for name, build in MESSAGES.items()}


def main() -> int:
    for name, data in build_all().items():
        with open(os.path.join(HERE, name), "wb") as handle:
            handle.write(data)
        print(f"{name}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
