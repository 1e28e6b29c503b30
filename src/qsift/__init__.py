"""qsift: a mail content filter for qmail and any SMTP/LMTP MTA."""
