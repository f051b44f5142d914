"""schedules.py: a weight, temperature or alpha as a pure function of the step."""

from kdistill import schedules


def test_schedules_endpoints():
    ramp = schedules.linear(2.0, 6.0)
    assert (ramp(0, 100), ramp(50, 100), ramp(100, 100), ramp(150, 100)) == (2.0, 4.0, 6.0, 6.0)
    assert schedules.value_at(3.5, 7, 10) == 3.5 and schedules.value_at(schedules.constant(1.5), 0, 0) == 1.5
