"""Mail authentication: DKIM signing and checks, SPF, DMARC, ARC, Authentication-Results, and DNS."""
