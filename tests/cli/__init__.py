"""Tests of the fleet CLI."""
