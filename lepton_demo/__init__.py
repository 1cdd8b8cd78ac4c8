"""Lepton's demo tasks: real public data sets split into sites, for demos, tests and benchmarks.

Each module loads one data set and names its partitions (:mod:`~lepton_demo.heart_disease`,
:mod:`~lepton_demo.breast_cancer`, :mod:`~lepton_demo.bank`, :mod:`~lepton_demo.drug_reviews`,
:mod:`~lepton_demo.elpv`); :mod:`lepton_demo.tasks` describes them as ``lepton_fl`` tasks, which
reach ``lepton_fl.datasets`` through the ``lepton_fl.tasks`` entry point ``demo`` (see
``pyproject.toml``). ``lepton_fl`` itself imports nothing from here: a site registers its own
tasks the same way.
"""
