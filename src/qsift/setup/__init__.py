"""`qsift setup`: the files that run qsift under daemontools or systemd and wire it to qmail or Postfix.

Each target has a module whose pure functions turn options into file contents (`qmail.py`,
`systemd.py`, `postfix.py`); `plan.py` holds the plan of files and the one function that writes it;
`command.py` is the command line. Nothing here renames, replaces or restarts anything of the MTA's: it
writes new files, and prints what the postmaster does next.
"""
