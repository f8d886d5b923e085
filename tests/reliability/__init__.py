"""The reliability and security suite: the whole pipeline (`dvc repro` of a reduced study, same
code path as the default one) in a copy of this project, with faults injected and bad inputs.

Each test records what it verified; the suite prints the count at the end of the run.
"""
