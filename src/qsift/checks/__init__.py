"""Judge a decoded message: banned files, bad headers (later: viruses, spam); each check yields Findings."""
