"""Nurture: marketing-automation journeys on Temporal."""
