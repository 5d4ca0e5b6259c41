"""SMTP smuggling inputs shared by the server-core, server and swaks tests."""

# The end-of-data look-alikes from the SMTP smuggling research (SEC Consult, 2023,
# and the Postfix/Sendmail/Exim follow-ups): none of them may end the data.
SMUGGLING_VARIANTS = [
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r.\n",
    b"\r\n.\r\r\n",
    b"\r\n.\n\r\n",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\n. \r\n",
    b"\r\n.\t\r\n",
    b"\r\r\n.\n",
    b"\n\n.\n\n",
]

SMUGGLED = (
    b"MAIL FROM:<evil@attacker.test>\r\n"
    b"RCPT TO:<victim@example.test>\r\n"
    b"DATA\r\n"
    b"From: ceo@example.test\r\n\r\nsmuggled\r\n"
)
