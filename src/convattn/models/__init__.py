"""Networks built from the operators in `convattn.layers`."""
