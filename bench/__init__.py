"""The benchmark scripts; a package so that ``bench.common`` can never be taken for the product's ``common``."""
