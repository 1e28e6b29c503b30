"""Take a message apart: MIME parts, encodings, archives, file types; every bound enforced here."""
