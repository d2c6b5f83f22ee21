package benchkit

import (
	"math"
	"slices"
)

// MedianInt returns the median of v (the mean of the middle two for an
// even count, rounded).
func MedianInt(v []int) int {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return int(math.Round(float64(s[n/2-1]+s[n/2]) / 2))
}

// Median returns the median of v leaving out NaNs (the mean of the middle
// two for an even count); NaN for none.
func Median(v []float64) float64 {
	s := slices.DeleteFunc(slices.Clone(v), math.IsNaN)
	if len(s) == 0 {
		return math.NaN()
	}
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
