//! svidcar iptables: planning and applying interception rules (filled by later issues).
