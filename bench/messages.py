"""Message profiles shared by every benchmark worker and the driver.

Each profile makes the raw bytes of message ``i`` (CRLF line ends, no dot-stuffing);
the workers build their envelopes or client calls from these bytes before the clock
starts. Nothing here imports the library under test, so the same module serves
slimta-relay, python-slimta 5.0.5 and aiosmtplib.

``tidy``
    The old benchmark message: two short headers and a 2048-byte body.
``2k``
    What a mail client sends, ~2 KB: From with a display name, To, Subject, Date,
    Message-ID, In-Reply-To/References, MIME-Version, Content-Type with a charset,
    Content-Transfer-Encoding, User-Agent, Content-Language, plus the Received line an
    edge adds. Quoted-printable text body.
``bulk``
    An ESP/bulk message, ~4 KB: two DKIM-Signature fields (one with ``b=`` folded, one
    unfolded on one 537-octet line), List-Unsubscribe with a ~150-character
    https URL and a mailto, List-Unsubscribe-Post, List-Id, Feedback-ID, Precedence and
    two Received lines. Quoted-printable HTML body.
``multipart``
    multipart/alternative, text/plain plus text/html, ~5 KB, with the ``2k`` client
    headers.

    python bench/messages.py [PROFILE]   # prints sizes, or one message
"""

from __future__ import annotations

import sys

PROFILES = ("2k", "bulk", "multipart", "tidy")
SENDER = "sender@example.com"
DATE = "Wed, 2 Dec 2026 07:41:09 +0100"

#: Text of the bodies: plain words, no line starting with a dot.
_PARAGRAPHS = [
    "Hi Bob,",
    "Thanks for sending the notes from Tuesday=E2=80=99s call. I went through the "
    "capacity numbers again and I think we can keep the current relay pool for "
    "another quarter, provided the retry queue stays under ten thousand messages "
    "at peak. The graphs you attached show two spikes last month, both during the "
    "billing run, and both drained within forty minutes.",
    "A few points before we meet on Thursday:",
    "1. The new MX records for the partner domains are live; the old ones stay "
    "published until the end of the month so nothing bounces while caches expire.",
    "2. Could you check whether the bounce handler still rewrites the envelope "
    "sender for the newsletter domain? Marketing says some replies land in the "
    "wrong mailbox.",
    "3. I would like to move the nightly reports to the secondary relay so they do "
    "not compete with customer mail in the morning.",
    "Let me know if Thursday at 10:30 still works for you, otherwise I am free on "
    "Friday after lunch.",
]

_HTML = [
    '<!DOCTYPE html><html lang=3D"en"><head><meta charset=3D"utf-8"><meta name=3D"vi=',
    'ewport" content=3D"width=3Ddevice-width, initial-scale=3D1"><title>December of=',
    "fers</title></head>",
    '<body style=3D"margin:0;padding:0;background:#f4f4f4;font-family:Arial,sans-s=',
    'erif"><table role=3D"presentation" width=3D"100%" cellpadding=3D"0" cellspaci=',
    'ng=3D"0"><tr><td align=3D"center"><table role=3D"presentation" width=3D"600" =',
    'style=3D"background:#ffffff"><tr><td style=3D"padding:24px 32px"><h1 style=3D=',
    '"font-size:24px;color:#222222">Winter gear, 20% off this week</h1><p style=3D=',
    '"font-size:15px;line-height:22px;color:#444444">Hello, we picked a few things =',
    "for the cold months ahead: jackets, boots and the thermal layers you looked at=",
    " in November. Use the code <strong>WINTER20</strong> at checkout until Sunday=",
    " night.</p>",
    '<p style=3D"text-align:center"><a href=3D"https://click.esp.example/c/eyJ1Ijo=',
    'iNDQ3MS0wMDAwMDAiLCJsIjoid2ludGVyLWdlYXIifQ" style=3D"display:inline-block;pa=',
    'dding:12px 24px;background:#c0392b;color:#ffffff;text-decoration:none;border-r=',
    'adius:4px">Shop the offers</a></p>',
    '<p style=3D"font-size:13px;line-height:19px;color:#777777">You receive this me=',
    "ssage because you subscribed to news from Shop Example. Manage your preference=",
    's or <a href=3D"https://unsubscribe.esp.example/v1/u/eyJjIjoiNDQ3MSIsInIiOiJyY=',
    '3B0MEBleGFtcGxlLmNvbSJ9">unsubscribe</a> at any time.</p>',
    '<img src=3D"https://open.esp.example/o/eyJjIjoiNDQ3MSIsIm0iOiIwMDAwMDAifQ.gif"=',
    ' width=3D"1" height=3D"1" alt=3D""></td></tr></table></td></tr></table></body>=',
    "</html>",
]

# A 2048-bit RSA signature is 344 base64 characters; this one is not a real signature.
_B64 = (
    "kX3t9Qm1vR0aZ8sLwP2yC7nH4eJ6bT5uV1oG0dF9iK2lM3nB8vC4xZ7qW1eR5tY6uI0oP3aS2dF4gH7jK"
    "9lL1zX8cV5bN3mQ6wE2rT4yU7iO9pA0sD1fG3hJ5kL8zX2cV4bN6mQ9wE1rT3yU5iO7pA8sD0fG2hJ4kL6z"
    "X9cV1bN3mQ5wE7rT9yU0iO2pA4sD6fG8hJ0kL2zX4cV6bN8mQ0wE3rT5yU7iO9pA1sD3fG5hJ7kL9zX0cV2"
    "bN4mQ6wE8rT0yU1iO3pA5sD7fG9hJ1kL3zX5cV7bN9mQ1wE4rT6yU8iO0pA2sD4fG6hJ8kL0zX3cV5bN7mQ"
    "9wE=="
)


def _folded(tag: str, value: str, width: int = 72) -> str:
    """``tag`` then ``value`` cut into continuation lines (as many DKIM signers do)."""
    lines = [tag + value[: width - len(tag) - 1]]
    rest = value[width - len(tag) - 1 :]
    while rest:
        lines.append("\t " + rest[: width - 2])
        rest = rest[width - 2 :]
    return "\r\n".join(lines)


def _wrap(para: str, out: list[str]) -> int:
    """Append ``para`` cut into quoted-printable lines of at most 74 columns."""
    size = 0
    line = ""
    for word in para.split(" "):
        if line and len(line) + 1 + len(word) > 72:
            out.append(line + " =")  # a soft line break
            size += len(out[-1]) + 2
            line = word
        else:
            line = f"{line} {word}" if line else word
    out.append(line)
    return size + len(line) + 2


def _text_body(target: int) -> str:
    """A reply of about ``target`` bytes: quoted-printable text cut at 72 columns,
    a signature, then as much of the quoted earlier message as fits."""
    out: list[str] = []
    for para in _PARAGRAPHS:
        _wrap(para, out)
        out.append("")
    out += ["--", "Alice Example", "Infrastructure team, Example Corp.", "",
            "On Tue, 1 Dec 2026 at 18:02, Bob Recipient <bob@example.com> wrote:"]
    quoted: list[str] = []
    for para in _PARAGRAPHS[1:] * 4:
        _wrap(para, quoted)
        quoted.append("")
    size = sum(len(line) + 2 for line in out)
    for line in quoted:
        if size + len(line) + 4 > target:
            break
        out.append("> " + line if line else ">")
        size += len(out[-1]) + 2
    return "\r\n".join(out) + "\r\n"


def _client_headers(i: int, content_type: str, cte: str | None) -> str:
    rcpt = recipient(i)
    lines = [
        "Received: from [192.0.2.45] (dsl-45.pool.example.net [192.0.2.45])\r\n"
        f"\tby mx.example.com (slimta) with ESMTPSA id {i:08x}c0ffee\r\n"
        f"\tfor <{rcpt}>; {DATE}",
        "From: Alice Example <alice@example.com>",
        f"To: Bob Recipient <{rcpt}>",
        "Subject: Re: Capacity notes from Tuesday's call and the relay pool plan",
        f"Date: {DATE}",
        f"Message-ID: <7f3c1a2e-{i:08d}-4b8e-9d21-5a6f0c4e8b1d@example.com>",
        "In-Reply-To: <CAF8qk2Lp0+Vn4Zx@mail.example.org>",
        "References: <CAF8qk2Lp0+Vn4Zx@mail.example.org>",
        "MIME-Version: 1.0",
        "User-Agent: Mozilla Thunderbird",
        "Content-Language: en-US",
        f"Content-Type: {content_type}",
    ]
    if cte:
        lines.append(f"Content-Transfer-Encoding: {cte}")
    return "\r\n".join(lines) + "\r\n"


def recipient(i: int) -> str:
    return f"rcpt{i}@example.com"


def _two_k(i: int) -> bytes:
    head = _client_headers(i, "text/plain; charset=UTF-8; format=flowed", "quoted-printable")
    return (head + "\r\n" + _text_body(2048 - len(head) - 2)).encode("ascii")


def _bulk_headers(i: int, content_type: str) -> str:
    rcpt = recipient(i)
    url = (
        "https://unsubscribe.esp.example/v1/oneclick/eyJjYW1wYWlnbiI6IjQ0NzEiLCJsaXN0Ijoid2ludGVy"
        f"LW9mZmVycyIsInJjcHQiOiJ{i:08d}In0.Zk3Lq9sVx2TgH7pW4rN8cQ1mB6"
    )
    lines = [
        "Received: from mta-17.esp.example (mta-17.esp.example [198.51.100.17])\r\n"
        f"\tby mx.example.com (slimta) with ESMTPS id {i:08x}b0a7\r\n"
        f"\tfor <{rcpt}>; {DATE}",
        "Received: from app-3.internal.esp.example (app-3.internal.esp.example [10.20.3.7])\r\n"
        f"\tby mta-17.esp.example (Postfix) with ESMTP id 4Qx{i:07d}zZ\r\n"
        f"\tfor <{rcpt}>; {DATE}",
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=news.shop.example;\r\n"
        "\ts=esp2026; t=1796193669; x=1796798469;\r\n"
        + "\th=from:to:subject:date:message-id:mime-version:content-type:\r\n"
        "\t list-unsubscribe:list-unsubscribe-post:list-id:feedback-id;"
        + "\r\n\tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
        + _folded("\tb=", _B64),
        "DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; d=esp.example; s=s1;"
        " t=1796193669; h=from:to:subject:date:message-id:list-unsubscribe:feedback-id;"
        " bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;"
        f" b={_B64}",
        "From: Shop Example <news@news.shop.example>",
        "Reply-To: Shop Example Support <support@shop.example>",
        f"To: {rcpt}",
        "Subject: Your December offers: 20% off winter gear, this week only",
        f"Date: {DATE}",
        f"Message-ID: <20261202064109.{i:08d}.4471@news.shop.example>",
        "MIME-Version: 1.0",
        f"Content-Type: {content_type}",
        "Content-Transfer-Encoding: quoted-printable",
        f"List-Unsubscribe: <{url}>,\r\n"
        f" <mailto:unsub-4471-{i:08d}@esp.example?subject=unsubscribe>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "List-Id: Shop Example winter offers <winter-offers.news.shop.example>",
        "Feedback-ID: 4471:winter-offers:newsletter:esp.example",
        "Precedence: bulk",
        f"X-ESP-Message-ID: 4471.{i:08d}.a7c3e9",
    ]
    return "\r\n".join(lines) + "\r\n"


def _bulk(i: int) -> bytes:
    head = _bulk_headers(i, 'text/html; charset="UTF-8"')
    return (head + "\r\n" + "\r\n".join(_HTML) + "\r\n").encode("ascii")


_BOUNDARY = "------------bnd0Zq8tLw3VxK1mN5pRc7sY"


def _multipart(i: int) -> bytes:
    head = _client_headers(
        i, f'multipart/alternative;\r\n boundary="{_BOUNDARY}"', None
    )
    text = _text_body(2000)
    lines = ['<html><head><meta http-equiv=3D"content-type" content=3D"text/html; =',
             'charset=3DUTF-8"></head><body>']
    for para in _PARAGRAPHS + _PARAGRAPHS[1:4]:
        _wrap(f"<p>{para}</p>", lines)
    html = "\r\n".join(lines) + "\r\n</body></html>\r\n"
    parts = [
        "This is a multi-part message in MIME format.\r\n",
        f"--{_BOUNDARY}\r\n"
        "Content-Type: text/plain; charset=UTF-8; format=flowed\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n" + text,
        f"--{_BOUNDARY}\r\n"
        "Content-Type: text/html; charset=UTF-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n" + html,
        f"--{_BOUNDARY}--\r\n",
    ]
    return (head + "\r\n" + "\r\n".join(parts)).encode("ascii")


#: The old benchmark body line (78 columns with CRLF).
LINE = b"The quick brown fox jumps over the lazy dog, again and again and again...\r\n"


def body_of(size: int) -> bytes:
    """``size`` bytes of CRLF-terminated text lines."""
    reps = size // len(LINE) + 1
    return (LINE * reps)[:size]


def _tidy(i: int) -> bytes:
    return b"From: sender@example.com\r\nSubject: bench %d\r\n\r\n" % i + body_of(2048)


_MAKERS = {"2k": _two_k, "bulk": _bulk, "multipart": _multipart, "tidy": _tidy}


def message(profile: str, i: int) -> bytes:
    """The raw bytes of message ``i`` of ``profile``."""
    return _MAKERS[profile](i)


def messages(profile: str, count: int) -> list[tuple[str, list[str], bytes]]:
    """``count`` messages as ``(sender, [recipient], raw bytes)``."""
    make = _MAKERS[profile]
    return [(SENDER, [recipient(i)], make(i)) for i in range(count)]


def big_message(profile: str, size: int) -> bytes:
    """The profile's header block over a body of ``size`` bytes of text lines.

    For ``multipart`` the body is a multipart/mixed of a short text part and an
    attachment (base64-like lines) that fills the size.
    """
    raw = message(profile, 0)
    head = raw[: raw.index(b"\r\n\r\n") + 4]
    if profile != "multipart":
        return head + body_of(size)
    head = head.replace(b"multipart/alternative", b"multipart/mixed")
    b = _BOUNDARY.encode()
    start = (
        b"--" + b + b"\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n"
        b"The export is attached.\r\n"
        b"--" + b + b"\r\nContent-Type: application/octet-stream; name=\"export.bin\"\r\n"
        b"Content-Disposition: attachment; filename=\"export.bin\"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    end = b"--" + b + b"--\r\n"
    line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n"
    fill = size - len(start) - len(end)
    body = (line * (fill // len(line) + 1))[:fill]
    if not body.endswith(b"\r\n"):
        body = body[:-2] + b"\r\n"
    return head + start + body + end


def write_lf(profile: str, path: str) -> int:
    """Write message 0 of ``profile`` with LF line ends, for ``smtp-source -F``.

    smtp-source sends each line of the file followed by CRLF and dot-stuffs it, so
    the wire carries the CRLF message (plus one empty line at the end). Returns the
    size of the CRLF message.
    """
    raw = message(profile, 0)
    with open(path, "wb") as f:
        f.write(raw.replace(b"\r\n", b"\n"))
    return len(raw)


def main() -> None:
    if len(sys.argv) > 1:
        sys.stdout.buffer.write(message(sys.argv[1], 0))
        return
    for name in PROFILES:
        raw = message(name, 0)
        head = raw.index(b"\r\n\r\n") + 4
        longest = max(len(line) for line in raw.split(b"\r\n"))
        fields = sum(1 for line in raw[:head].split(b"\r\n") if line and line[:1] not in b" \t")
        print(f"{name:10} {len(raw):6} bytes  header block {head:5} bytes, {fields:2} fields, "
              f"longest line {longest}")


if __name__ == "__main__":
    main()
