# qsift: the two commands of the quick start are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration venv fuzz clean

# Debian packages the decoder needs (libarchive, libmagic, 7-Zip for ARJ/CHM/SZDD) and the tests use
# (clamav-testfiles: ClamAV's test file in many containers; clamd, clamscan and spamd, which the tests
# start on private sockets with their own data; Postfix, which a test runs as a private instance on
# loopback ports, preseeded "No configuration" so no system MTA is set up; systemd for systemd-analyze, which
# checks the unit qsift setup systemd writes; Knot DNS, which the tests run on a private loopback port with
# their own zones, and OpenDKIM's tools, a second DKIM implementation; PostgreSQL for the shared store, whose
# initdb and pg_ctl the tests run as a private cluster in a temp dir, never the system cluster the package sets
# up; perl for amavisd-release, below). Installed only when missing.
DEBS := libarchive13 libmagic1 p7zip-full clamav-testfiles clamav clamav-daemon spamassassin spamc rspamd daemontools ucspi-tcp shellcheck postfix systemd knot opendkim-tools postgresql perl
# amavisd-new's release client, which the tests point at qsift's AM.PDP server: the Debian package is
# fetched and unpacked under .venv, never installed (installing it would start an amavisd on port 10024).
AMAVISD_RELEASE := $(VENV)/amavisd-new/usr/sbin/amavisd-release

$(STAMP): pyproject.toml
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

$(AMAVISD_RELEASE):
	mkdir -p $(VENV)/amavisd-new
	cd $(VENV)/amavisd-new && rm -f amavisd-new_*.deb && \
		{ apt-get download -q amavisd-new 2>/dev/null || \
		{ apt-get update -q >/dev/null && apt-get download -q amavisd-new; }; } && \
		dpkg -x amavisd-new_*.deb . && rm -f amavisd-new_*.deb || \
		echo "amavisd-new could not be fetched: the tests that run amavisd-release will be skipped"

venv: $(STAMP) $(AMAVISD_RELEASE)

demo: $(STAMP)
	$(BIN)/python -m qsift.demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) $(AMAVISD_RELEASE) lint typecheck
	HYPOTHESIS_PROFILE=repeatable $(BIN)/coverage run -m pytest -q
	$(BIN)/coverage report --include='src/qsift/wire/*,src/qsift/decode/mime.py,src/qsift/decode/filetype.py,src/qsift/checks/banned.py,src/qsift/checks/headers.py,src/qsift/config/*,src/qsift/declare.py' --fail-under=100
	# The answer table and the rules that fold answers are walked whole by their case tables; the rest of
	# pipeline/ is held at what the suite reaches now (92 % of it by the unit tests and the answer-table,
	# destiny and quarantine integration tests alone).
	$(BIN)/coverage report --include='src/qsift/answers.py,src/qsift/pipeline/answer.py' --fail-under=100
	$(BIN)/coverage report --include='src/qsift/pipeline/*' --fail-under=90

# The fast loop: the unit tests and the fuzz entries' hypothesis wrappers, without the tests marked slow,
# one process per core (pytest-xdist; about 40 s here on 2 cores, 70 s in one); `make test` runs
# everything serially, lint and type checks too.
unit: $(STAMP)
	HYPOTHESIS_PROFILE=repeatable $(BIN)/python -m pytest -q -n auto -m 'not slow' tests/unit tests/fuzz

# Real daemons on loopback (clamd, spamd, Postfix, qsift's own workers): minutes, not seconds.
integration: $(STAMP) $(AMAVISD_RELEASE)
	HYPOTHESIS_PROFILE=repeatable $(BIN)/python -m pytest -q tests/integration

# Every fuzz entry (tests/fuzz/) for FUZZ_SECONDS each under atheris, seeded, then a table of what each
# reached; not part of `make test`. The corpora grow in .fuzz/ from run to run; findings are left there too.
# FUZZ_ENTRIES="qmqp spamd" runs only those; python -m tests.fuzz.replay ENTRY FILE replays a finding.
FUZZ_SECONDS  ?= 60
FUZZ_MESSAGES ?= ../shared/corpus

fuzz: $(STAMP)
	$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/pip install -q -e '.[fuzz]'
	$(BIN)/python -m tests.fuzz.campaign --seconds $(FUZZ_SECONDS) --messages $(FUZZ_MESSAGES) $(FUZZ_ENTRIES)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage .fuzz
