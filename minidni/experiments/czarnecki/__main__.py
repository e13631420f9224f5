"""`python -m minidni.experiments.czarnecki`: the experiments' own command line (`report.main`)."""

from minidni.experiments.czarnecki.report import main

if __name__ == "__main__":  # importing this module (the API reference does) must not run the command
    raise SystemExit(main())
