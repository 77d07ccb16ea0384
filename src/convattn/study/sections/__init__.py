"""The sections of `convattn study`, one file each; each module defines `SECTION` (see `..section`)."""
