package main

import "os"

// envLookup is os.Getenv; a variable so tests can replace it.
var envLookup = os.Getenv
