//go:build !race

package caddyfile_test

// raceDetector: the tests run with -race.
const raceDetector = false
