module example.invalid/ci/pause

go 1.24
