"""Test helpers: headless-browser fixtures, fake FLAME files, the demo driving-sequence maker."""
