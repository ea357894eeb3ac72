"""Readers and writers for Prophesee recordings (DAT, RAW EVT 2.0 / 3.0) and Gen1 box labels."""
